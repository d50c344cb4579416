import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mustache
import Sluice
import SluiceKafka
import Synchronization

/// The dashboard's pages: shards (with their rows), one shard, the audit timeline.
extension Dashboard {
    func shardsPage(_ request: Request) -> [String: Any] {
        let view = GroupView(host: host)
        let topicFilter = request.uri.queryParameters.get("topic").flatMap { $0.isEmpty ? nil : $0 }
        let stateFilter = request.uri.queryParameters.get("state").flatMap { $0.isEmpty ? nil : $0 }
        let shown = view.shards.filter { shard in
            (topicFilter == nil || shard.topicPartition.topic == topicFilter)
                && (stateFilter == nil || shard.state == stateFilter)
        }
        let topics = Set(view.shards.map(\.topicPartition.topic)).sorted()
        let states = ["starting", "running", "draining", "off", "backingOff", "tripped", "stopped"]
        return [
            "hosts": view.hosts.map { host -> [String: Any] in
                [
                    "identity": host.identity, "this": host.isThis, "heartbeat": "\(host.heartbeatAgeSeconds) s ago",
                    "shards": host.shardCount,
                    "applied": host.applied.map(String.init) ?? "-", "up": host.upSeconds.map(Self.age) ?? "-",
                    "troubled": host.backingOffOrTripped, "crashes": host.shardCrashes, "restarts": host.shardRestarts,
                ]
            },
            "controlPlane": host.control != nil,
            "hasWorkers": !host.workerSlots.isEmpty,
            "workers": host.workerSlots.map { slot -> [String: Any] in
                [
                    "slot": slot.slot, "state": slot.state, "pid": slot.pid.map(String.init) ?? "-",
                    "restarts": slot.restarts, "reason": slot.trippedReason ?? "",
                ]
            },
            "flags": host.flags.flags.sorted { $0.key < $1.key }.map { key, setting -> [String: Any] in
                [
                    "key": key.description, "value": Self.describe(setting), "source": setting.source,
                    "reason": setting.reason ?? "", "who": setting.who ?? "",
                ]
            },
            "topics": topics.map { ["name": $0, "selected": $0 == topicFilter] },
            "states": states.map { ["name": $0, "selected": $0 == stateFilter] },
            "shards": shown.map(row),
            "shownCount": shown.count, "totalCount": view.shards.count,
        ]
    }

    func row(_ shard: GroupView.Shard) -> [String: Any] {
        let report = shard.report
        var row: [String: Any] = [
            "shard": shard.topicPartition.description, "topic": shard.topicPartition.topic,
            "partition": shard.topicPartition.partition,
            "owner": shard.owner, "state": shard.state, "paused": !shard.reasons.isEmpty,
            "reasons": shard.reasons.map { ["name": $0.name, "why": $0.why] },
            "lag": report.lag.map(String.init) ?? "-",
            "lagSeconds": report.lagSeconds.map { String(format: "%.1f s", $0) } ?? "",
            "committed": report.committedOffset.map(String.init) ?? "-",
            "position": report.position.map(String.init) ?? "-",
            "highWatermark": report.highWatermark.map(String.init) ?? "-", "inFlight": report.inFlight,
            "processed": report.processed,
            "failed": report.failed, "deadLettered": report.deadLettered, "attempt": report.attempt,
            "lastError": report.lastError ?? "",
        ]
        // Sections test presence: absent keys, never empty strings.
        if let retried = report.retriedLater { row["retriedLater"] = retried }
        if let next = report.restartInSeconds { row["nextProbe"] = String(format: "%.0f s", next.rounded(.up)) }
        if let rate = report.rate { row["rate"] = ControlRecord.describeRate(rate) }
        if let points = history.sparkline(shard.topicPartition) { row["sparkline"] = points }
        if let quarantine = shard.quarantine {
            row["quarantine"] =
                [
                    "offset": quarantine.offset, "state": quarantine.state.rawValue, "summary": quarantine.summary,
                    "report": quarantine.report ?? "", "crashes": quarantine.crashes, "signal": quarantine.signal,
                    "releasable": quarantine.state == .quarantined || quarantine.state == .suspect,
                    "deadLetterable": host.configuration.topics[shard.topicPartition.topic]?.deadLetterTopic != nil,
                ] as [String: Any]
        }
        if let trip = shard.trip { row["trip"] = trip }
        return row
    }

    func shardPage(_ topicPartition: TopicPartition) -> [String: Any] {
        let view = GroupView(host: host)
        guard let shard = view.shards.first(where: { $0.topicPartition == topicPartition }) else {
            return ["missing": true, "shard": topicPartition.description]
        }
        var context = row(shard)
        context["flag"] = Self.describe(host.flags.setting(for: topicPartition))
        return context
    }

    func auditPage() async -> [String: Any] {
        var context: [String: Any] = [
            "sourceErrors": host.flags.lastErrors.sorted { $0.key < $1.key }.map {
                ["source": $0.key, "error": $0.value]
            }
        ]
        guard let control = host.control else {
            context["noControlPlane"] = true
            return context
        }
        let rejected = control.rejected
        context["rejectedCount"] = rejected.count
        context["rejected"] = rejected.latest.reversed().map {
            ["offset": $0.offset, "key": $0.key, "reason": $0.reason.rawValue, "detail": $0.detail]
        }
        let topic = ControlPlaneWriter.auditTopic(forControl: control.topic)
        let (host, logger) = (self.host, self.logger)
        // One read of the audit topic serves every request within two seconds of it, and requests that come
        // while it runs wait for it: a burst of requests opens one reader, not one each.
        let (entries, error) = await audit.read(maxAge: .seconds(2)) {
            let entries = Mutex<[AuditEntry]>([])
            do {
                let reader = try ControlTopicReader(
                    bootstrapServers: host.configuration.kafka.bootstrap, topic: topic,
                    properties: host.configuration.controlProperties, logger: logger
                ) { record in
                    if let value = record.value, let entry = AuditEntry(decoding: value) {
                        entries.withLock { $0.append(entry) }
                    }
                }
                try await reader.load(timeout: .seconds(5))
                await reader.close()
                return (entries.withLock { Array($0.suffix(500)) }, nil)
            } catch {
                return (
                    entries.withLock { Array($0.suffix(500)) }, "the audit topic '\(topic)' could not be read: \(error)"
                )
            }
        }
        if let error { context["auditError"] = error }
        context["entries"] = entries.reversed().map { entry -> [String: Any] in
            [
                "at": Date(timeIntervalSince1970: Double(entry.atMilliseconds) / 1000).formatted(.iso8601),
                "who": entry.who ?? "-",
                "subject": entry.subject, "before": entry.before ?? "?", "after": entry.after,
                "why": entry.reason ?? "",
            ]
        }
        return context
    }
}
