import Foundation
import Logging
import Metrics
import SluiceKafka
import Synchronization

/// What a host of the group says of itself in the control topic (`host/ID`).
public struct ControlHostStatus: Equatable, Sendable {
    /// One owned shard as its host last reported it.
    public struct Shard: Equatable, Sendable {
        /// Why its partition is paused (`flag`, `tripped`, `flowControl`, ...), sorted.
        public var pauseReasons: [String] = []
        /// Messages behind the high watermark, when known.
        public var lag: Int64?
        /// The committed offset, when known.
        public var committed: Int64?
        /// The partition's high watermark, when known.
        public var highWatermark: Int64?
        /// Messages in handler calls now.
        public var inFlight = 0
        /// Messages handled, failed and dead-lettered since the shard started on this host.
        public var processed = 0
        public var failed = 0
        public var deadLettered = 0
        /// The breaker's attempt (0 while healthy).
        public var attempt = 0
        /// The last error, shortened.
        public var lastError: String?
        /// Seconds until a backing-off shard's next start, when it backs off.
        public var nextProbeSeconds: Double?

        /// Creates a shard report.
        public init() {}
    }

    /// Every control record before this offset is applied on the host.
    public var applied: Int64
    /// When the host wrote this, in milliseconds since the epoch (hosts write every few seconds).
    public var atMilliseconds: Int64
    /// The shards it owns (`topic/partition`) and their states.
    public var shards: [String: String]
    /// The same shards in more detail (pause reasons, lag, counts), refreshed with every heartbeat.
    public var details: [String: Shard] = [:]
    /// When the host process started, in milliseconds since the epoch.
    public var startedAtMilliseconds: Int64?
    /// Shard crashes and restarts on the host since it started.
    public var shardCrashes = 0
    public var shardRestarts = 0

    /// Creates a host status.
    public init(
        applied: Int64, atMilliseconds: Int64, shards: [String: String], details: [String: Shard] = [:],
        startedAtMilliseconds: Int64? = nil
    ) {
        self.applied = applied
        self.atMilliseconds = atMilliseconds
        self.shards = shards
        self.details = details
        self.startedAtMilliseconds = startedAtMilliseconds
    }

    /// Whether the host wrote this within `window` milliseconds before `now` (ms since the epoch). A record
    /// dated more than a minute ahead of `now` is not live: clocks differ by less, and a forged far-future
    /// heartbeat must not keep a host that is gone counted as live.
    public func isLive(now: Int64, window: Int64) -> Bool {
        let age = now.milliseconds(since: atMilliseconds)
        return age >= -60_000 && age <= window
    }

    /// Seconds since the host wrote this (0 for a time ahead of `now`).
    public func ageSeconds(now: Int64) -> Int64 { max(0, now.milliseconds(since: atMilliseconds) / 1000) }

    /// Seconds since the host process started, when it said.
    public func upSeconds(now: Int64) -> Int64? {
        startedAtMilliseconds.map { max(0, now.milliseconds(since: $0) / 1000) }
    }

    func object() -> [String: Any] {
        var object: [String: Any] = ["applied": applied, "atMillis": atMilliseconds, "shards": shards]
        if let startedAtMilliseconds { object["startedAtMillis"] = startedAtMilliseconds }
        object["shardCrashes"] = shardCrashes
        object["shardRestarts"] = shardRestarts
        if !details.isEmpty {
            object["details"] = details.mapValues { shard -> [String: Any] in
                var entry: [String: Any] = [
                    "pauseReasons": shard.pauseReasons, "inFlight": shard.inFlight, "processed": shard.processed,
                    "failed": shard.failed,
                    "deadLettered": shard.deadLettered, "attempt": shard.attempt,
                ]
                if let lag = shard.lag { entry["lag"] = lag }
                if let committed = shard.committed { entry["committed"] = committed }
                if let highWatermark = shard.highWatermark { entry["highWatermark"] = highWatermark }
                if let lastError = shard.lastError { entry["lastError"] = lastError }
                if let next = shard.nextProbeSeconds { entry["nextProbeSeconds"] = next }
                return entry
            }
        }
        return object
    }

    /// Reads a host record's fields, each checked against ``InputLimits``: `applied`, `atMillis` and the shard
    /// table are state and refused when wrong; the details are a report, and a detail that cannot be read is left out.
    init(fields: JSONFields, bad: @escaping (ControlRecordRejected.Reason, String) -> ControlRecordRejected) throws {
        let applied = try fields.requiredInt64("applied", in: InputLimits.offsets)
        let at = try fields.requiredInt64("atMillis", in: InputLimits.epochMilliseconds)
        var shards: [String: String] = [:]
        if let table = try fields.object("shards") {
            guard table.count <= InputLimits.shardsPerHost else {
                throw bad(.range, "'shards' has more than \(InputLimits.shardsPerHost) entries")
            }
            for (key, value) in table {
                guard key.count <= InputLimits.identityLength, let state = value as? String, state.count <= 32 else {
                    throw bad(.field, "'shards' maps TOPIC/PARTITION to a state name")
                }
                shards[key] = state
            }
        }
        self.init(applied: applied, atMilliseconds: at, shards: shards)
        startedAtMilliseconds = try fields.int64("startedAtMillis", in: InputLimits.epochMilliseconds)
        shardCrashes = try fields.int("shardCrashes", in: InputLimits.counts) ?? 0
        shardRestarts = try fields.int("shardRestarts", in: InputLimits.counts) ?? 0
        let details = try fields.object("details") ?? [:]
        guard details.count <= InputLimits.shardsPerHost else {
            throw bad(.range, "'details' has more than \(InputLimits.shardsPerHost) entries")
        }
        for (key, value) in details {
            guard let entry = value as? [String: Any] else { continue }
            let detail = JSONFields(entry) { bad($0, $1) }
            var shard = Shard()
            shard.pauseReasons = (try? detail.strings("pauseReasons", maxLength: 64, maxCount: 16)) ?? []
            shard.lag = try? detail.int64("lag", in: InputLimits.offsets)
            shard.committed = try? detail.int64("committed", in: InputLimits.offsets)
            shard.highWatermark = try? detail.int64("highWatermark", in: InputLimits.offsets)
            shard.inFlight = (try? detail.int("inFlight", in: InputLimits.counts)) ?? 0
            shard.processed = (try? detail.int("processed", in: InputLimits.counts)) ?? 0
            shard.failed = (try? detail.int("failed", in: InputLimits.counts)) ?? 0
            shard.deadLettered = (try? detail.int("deadLettered", in: InputLimits.counts)) ?? 0
            shard.attempt = (try? detail.int("attempt", in: InputLimits.counts)) ?? 0
            shard.lastError = try? detail.string("lastError", maxLength: InputLimits.textLength)
            shard.nextProbeSeconds = try? detail.double("nextProbeSeconds", in: InputLimits.seconds)
            self.details[key] = shard
        }
    }
}
