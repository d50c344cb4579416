import SluiceKafka

/// Something that happened to a shard, as ``SluiceHost/events()`` delivers it.
public struct ShardEvent: Sendable, Hashable, CustomStringConvertible {
    /// What happened.
    public enum Kind: Sendable, Hashable {
        /// The pipeline started (`probe`: a half-open start after a trip's cooldown).
        case started(attempt: Int, probe: Bool)
        /// The shard stopped processing.
        case stopped(ShardStopReason)
        /// The pipeline crashed; `attempt` counts crashes since the shard was last healthy.
        case crashed(reason: String, attempt: Int)
        /// The shard restarts after a backoff.
        case backingOff(until: ContinuousClock.Instant)
        /// The breaker tripped: the shard stays down until a flag cycle, a reset or a probe.
        case tripped(reason: String)
        /// An operator reset the shard.
        case reset
        /// The shard ran `healthyAfter` without a crash; its attempt count is back to 0.
        case healthy
        /// The shard's flag changed.
        case flagChanged(enabled: Bool, source: String, reason: String?)
        /// The shard runs, unpaused, with messages waiting, and has made no progress since `since`
        /// (`host.stallAfter`): something outside its state holds it (a partition that does not fetch, a
        /// handler that never returns within a long `handlerTimeout`).
        case stalled(since: ContinuousClock.Instant)
        /// A stalled shard made progress again, or stopped being expected to (paused, idle, stopped).
        case stallCleared
    }

    /// The shard.
    public let topicPartition: TopicPartition
    /// What happened.
    public let kind: Kind

    public var description: String { "\(topicPartition): \(kind)" }
}
