import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The group as the dashboard shows it: every live host (from the control plane's host records) and every
/// shard of the group, this host's from its own live state and the others' from their latest records.
/// Without the control plane, only this host.
struct GroupView {
    struct Host {
        var identity: String
        var isThis: Bool
        var heartbeatAgeSeconds: Int64
        var shardCount: Int
        var applied: Int64?
        var upSeconds: Int64?
        var backingOffOrTripped: Int
        var shardCrashes: Int
        var shardRestarts: Int
    }

    /// A shard as its owner reports it, with what the group knows of it.
    struct Shard {
        var report: ShardReport
        var owner: String
        /// Each pause reason with what is behind it: the flag's source and reason, the trip's error.
        var reasons: [(name: String, why: String)]
        /// The group's quarantine at the shard (with its crash report and release state).
        var quarantine: Quarantine?
        /// Why the group's trip record holds it.
        var trip: String?

        var topicPartition: TopicPartition { report.topicPartition }
        var state: String { report.state }
    }

    var hosts: [Host] = []
    var shards: [Shard] = []

    /// Live: a host record written in the last 15 s (hosts write every 5 s).
    static let liveMilliseconds: Int64 = 15_000

    init(host: SluiceHost) {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let own = host.shards
        let control = host.control
        let quarantines = control?.quarantines ?? host.quarantines
        let trips = control?.trips ?? [:]

        func explain(_ reason: String, _ topicPartition: TopicPartition, lastError: String?) -> String {
            switch reason {
            case KafkaPauseReason.flag.name:
                let setting = host.flags.setting(for: topicPartition)
                return
                    "flag off (\(setting.source)\(setting.who.map { ", by \($0)" } ?? "")\(setting.reason.map { ": \($0)" } ?? ""))"
            case KafkaPauseReason.breaker.name:
                return trips[topicPartition].map { "tripped: \($0.reason)" } ?? lastError.map { "breaker: \($0)" }
                    ?? "breaker"
            case KafkaPauseReason.quarantine.name:
                return quarantines[topicPartition]?.summary ?? "held at a quarantined message"
            case KafkaPauseReason.flowControl.name:
                return "buffer full: the handlers are behind the fetch"
            case KafkaPauseReason.backpressure.name:
                return "too much work in flight"
            case KafkaPauseReason.draining.name:
                return "draining before it stops"
            default:
                return reason
            }
        }

        let moment = ContinuousClock.now
        for status in own {
            let topicPartition = status.topicPartition
            shards.append(
                Shard(
                    report: ShardReport(status, now: moment), owner: host.identity,
                    reasons: status.pauseReasons.map(\.name).sorted().map {
                        ($0, explain($0, topicPartition, lastError: status.lastError))
                    },
                    quarantine: quarantines[topicPartition] ?? status.quarantine, trip: trips[topicPartition]?.reason))
        }
        var ownShown = false
        for (identity, record) in (control?.hosts ?? [:]).sorted(by: { $0.key < $1.key })
        where record.isLive(now: now, window: Self.liveMilliseconds) {
            let isThis = identity == host.identity
            ownShown = ownShown || isThis
            hosts.append(
                Host(
                    identity: identity, isThis: isThis, heartbeatAgeSeconds: record.ageSeconds(now: now),
                    shardCount: isThis ? own.count : record.shards.count, applied: record.applied,
                    upSeconds: record.upSeconds(now: now),
                    backingOffOrTripped: record.shards.values.filter { $0 == "backingOff" || $0 == "tripped" }.count,
                    shardCrashes: isThis ? host.shardCrashesAndRestarts.crashes : record.shardCrashes,
                    shardRestarts: isThis ? host.shardCrashesAndRestarts.restarts : record.shardRestarts))
            guard !isThis else { continue }
            for (key, state) in record.shards {
                guard let topicPartition = TopicPartition(parsing: key) else { continue }
                var report = record.details[key] ?? ShardReport(topicPartition: topicPartition, state: state)
                report.state = state
                report.rate = host.flags.setting(for: topicPartition).rate
                shards.append(
                    Shard(
                        report: report, owner: identity,
                        reasons: report.pauseReasons.map {
                            ($0, explain($0, topicPartition, lastError: report.lastError))
                        },
                        quarantine: quarantines[topicPartition], trip: trips[topicPartition]?.reason))
            }
        }
        // A supervisor's workers, from what they report to it (with the control plane on, their host records
        // above show them too: a shard is listed once per owner).
        let listed = Set(shards.map(\.topicPartition))
        for report in host.workerShards where !listed.contains(report.topicPartition) {
            let topicPartition = report.topicPartition
            var report = report
            report.rate = host.flags.setting(for: topicPartition).rate
            shards.append(
                Shard(
                    report: report, owner: "\(host.identity)-w\(report.worker ?? 0)",
                    reasons: report.pauseReasons.map { ($0, explain($0, topicPartition, lastError: report.lastError)) },
                    quarantine: quarantines[topicPartition], trip: trips[topicPartition]?.reason))
        }
        if !ownShown {
            hosts.insert(
                Host(
                    identity: host.identity, isThis: true, heartbeatAgeSeconds: 0, shardCount: own.count,
                    applied: control?.loadedPosition,
                    upSeconds: nil,
                    backingOffOrTripped: own.filter { $0.state.name == "backingOff" || $0.state.name == "tripped" }
                        .count,
                    shardCrashes: host.shardCrashesAndRestarts.crashes,
                    shardRestarts: host.shardCrashesAndRestarts.restarts),
                at: 0)
        }
        shards.sort { ($0.topicPartition, $0.owner) < ($1.topicPartition, $1.owner) }
    }

    /// What a flag change would do to each shard it covers (the dry run shown before it is confirmed).
    func preview(_ key: FlagKey, enabled: Bool?, rate: Double?) -> [(shard: Shard, change: String, changes: Bool)] {
        shards.filter { key.covers($0.topicPartition) }.map { shard in
            let (effect, changes) = ControlRecord.flagEffect(on: shard.state, enabled: enabled, rate: rate)
            return (shard, effect, changes)
        }
    }
}

/// Lag samples of the group's shards for the sparklines: one every few seconds, the last few minutes.
final class LagHistory: Sendable {
    private let samples = Mutex<[TopicPartition: [Int64]]>([:])
    let keep: Int

    init(keep: Int = 36) { self.keep = keep }

    func record(_ view: GroupView) {
        samples.withLock { samples in
            var seen = Set<TopicPartition>()
            for shard in view.shards {
                seen.insert(shard.topicPartition)
                samples[shard.topicPartition, default: []].append(shard.report.lag ?? 0)
                if samples[shard.topicPartition]!.count > keep { samples[shard.topicPartition]!.removeFirst() }
            }
            for key in samples.keys where !seen.contains(key) { samples[key] = nil }
        }
    }

    /// An inline SVG polyline's points (width 90, height 20), or nil with fewer than two samples.
    func sparkline(_ topicPartition: TopicPartition) -> String? {
        let values = samples.withLock { $0[topicPartition] ?? [] }
        guard values.count >= 2 else { return nil }
        let top = max(values.max() ?? 1, 1)
        let step = 90.0 / Double(keep - 1)
        let offset = Double(keep - values.count) * step
        return values.enumerated().map { index, value in
            String(format: "%.1f,%.1f", offset + Double(index) * step, 19.0 - 18.0 * Double(value) / Double(top))
        }.joined(separator: " ")
    }
}
