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
    }

    /// The shard.
    public let topicPartition: TopicPartition
    /// What happened.
    public let kind: Kind

    public var description: String { "\(topicPartition): \(kind)" }
}
