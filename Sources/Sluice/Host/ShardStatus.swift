import SluiceKafka

/// A shard's lifecycle state (SLUICE.md §4; the breaker's states come with the supervisor).
public enum ShardState: Sendable, Hashable, CustomStringConvertible {
    /// Processing.
    case running
    /// Finishing in-flight work before it stops (revoked, or the host is shutting down).
    case draining
    /// Done: revoked, lost or shut down.
    case stopped
    /// The pipeline crashed; the partition is paused and nothing past ``ShardCrash/offset`` is committed.
    case crashed(ShardCrash)

    public var description: String {
        switch self {
        case .running: "running"
        case .draining: "draining"
        case .stopped: "stopped"
        case .crashed: "crashed"
        }
    }
}

/// A snapshot of one shard, for status pages, summaries and tests.
public struct ShardStatus: Sendable, Hashable {
    /// The partition.
    public var topicPartition: TopicPartition
    /// Which assignment of the partition this shard belongs to.
    public var generation: UInt64
    /// The state.
    public var state: ShardState
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
    /// The last offset stored for commit (the next offset to consume), if any.
    public var storedOffset: Int64?
    /// The partition's high watermark as of the last fetch, if known.
    public var highWatermark: Int64?

    /// Messages in the partition not yet done by this group: high watermark − stored offset.
    public var lag: Int64? {
        guard let highWatermark else { return nil }
        return max(0, highWatermark - (storedOffset ?? 0))
    }
}
