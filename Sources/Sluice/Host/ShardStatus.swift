import SluiceKafka

/// A shard's lifecycle state (docs/architecture.md §4).
public enum ShardState: Sendable, Hashable, CustomStringConvertible {
    /// Its pipeline is being started.
    case starting
    /// Processing.
    case running
    /// Finishing in-flight work before it stops (flag off, revoked, or the host is shutting down).
    case draining
    /// Its flag is off; the partition is paused.
    case off
    /// It crashed and restarts at `until`.
    case backingOff(attempt: Int, until: ContinuousClock.Instant)
    /// The breaker tripped at `since`; it stays down until a flag cycle, an operator reset or a probe.
    case tripped(since: ContinuousClock.Instant, reason: String)
    /// Done: revoked, lost or shut down.
    case stopped

    public var description: String {
        switch self {
        case .starting: "starting"
        case .running: "running"
        case .draining: "draining"
        case .off: "off"
        case .backingOff: "backingOff"
        case .tripped: "tripped"
        case .stopped: "stopped"
        }
    }

    /// The state's name without its data, as metrics and the admin API show it.
    public var name: String { description }
}

/// A snapshot of one shard, for status pages, summaries and tests.
public struct ShardStatus: Sendable, Hashable {
    /// The partition.
    public var topicPartition: TopicPartition
    /// Which assignment of the partition this shard belongs to.
    public var generation: UInt64
    /// The state.
    public var state: ShardState
    /// Crashes since the shard was last healthy.
    public var attempt: Int
    /// The last crash, if any.
    public var lastError: String?
    /// The pause reasons of its partition.
    public var pauseReasons: Set<KafkaPauseReason>
    /// Its flag and where that came from.
    public var flag: FlagSetting
    /// Messages taken from the partition and not yet done.
    public var inFlight: Int
    /// Messages handled successfully.
    public var processed: Int
    /// Handler failures (each retry counts).
    public var failed: Int
    /// Messages skipped after failures.
    public var skipped: Int
    /// Messages written to the dead-letter topic.
    public var deadLettered: Int
    /// Messages written to a retry topic (`onFailure: retryLater`).
    public var retriedLater = 0
    /// The last offset stored for commit (the next offset to consume), if any.
    public var storedOffset: Int64?
    /// The partition's high watermark as of the last fetch, if known.
    public var highWatermark: Int64?
    /// The consumer's fetch position in the partition, if known.
    public var position: Int64?
    /// The group's committed offset as last queried for a shard that stored nothing yet (with none committed,
    /// where `auto.offset.reset` starts it), if known.
    public var committedOffset: Int64?
    /// How old the oldest message not yet done is, in seconds: 0 with no lag, nil when unknown (its message
    /// was not fetched yet, for example while the shard is paused).
    public var lagSeconds: Double?
    /// Seconds until a backing-off shard is started again (its breaker's next probe); nil in other states.
    public var nextProbeSeconds: Double? {
        guard case .backingOff(_, let until) = state else { return nil }
        return max(0, (until - .now).seconds)
    }

    /// Since when the shard is stalled: running, unpaused, messages waiting, no progress for `stallAfter`.
    public var stalledSince: ContinuousClock.Instant?
    /// Handler calls abandoned past `handlerTimeout` (or the drain timeout) and still running.
    public var abandonedCalls = 0
    /// A message of the partition that killed the process (docs/architecture.md §12), and what is done with it.
    public var quarantine: Quarantine?

    /// Messages in the partition not yet done by this group: high watermark − the stored offset (or, before
    /// the shard stored one, the committed offset). Nil when unknown, never the whole partition by default.
    public var lag: Int64? {
        guard let highWatermark, let done = storedOffset ?? committedOffset else { return nil }
        return max(0, highWatermark - done)
    }
}

extension ShardStatus {
    /// Adds a pipeline's counts to the shard's.
    mutating func add(_ counters: ShardPipeline.Counters) {
        processed += counters.processed
        failed += counters.failed
        skipped += counters.skipped
        deadLettered += counters.deadLettered
        retriedLater += counters.retriedLater
    }
}
