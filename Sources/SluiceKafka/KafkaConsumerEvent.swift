/// A group membership change delivered by ``KafkaConsumer/events``.
public enum KafkaConsumerEvent: Sendable {
    /// These partitions were added to this consumer. Their message sequences
    /// (``KafkaConsumer/messages(for:)``) exist when this event is delivered, and any pause reasons
    /// returned by ``KafkaConsumer/InitialPauseReasons`` were applied before the first fetch.
    case assigned([TopicPartition])
    /// These partitions are being taken away. Their message sequences have ended. The partitions stay
    /// assigned, so offsets can still be stored and committed, until the owner calls
    /// ``KafkaRevocation/done()`` or ``KafkaConsumerConfiguration/revokeTimeout`` passes; the consumer
    /// then commits the stored offsets and releases them.
    case revoked(KafkaRevocation)
    /// These partitions were lost (the session expired): another member may already own them, so
    /// nothing was committed for them. Their message sequences have ended.
    case lost([TopicPartition])
    /// A non-fatal error reported by librdkafka (for example a broker that went down). librdkafka
    /// keeps retrying; this is for logs and metrics.
    case error(KafkaError)
}

/// A revocation in progress: the owner finishes its work on ``partitions``, stores the offsets of what
/// completed, then calls ``done()``.
public struct KafkaRevocation: Sendable {
    /// The partitions being revoked.
    public let partitions: [TopicPartition]
    let identifier: UInt64
    let release: @Sendable (UInt64) -> Void

    /// Tells the consumer the owner is done with ``partitions``: it commits stored offsets and releases
    /// them. Calling it more than once has no further effect.
    public func done() { release(identifier) }
}

/// Why a partition is paused. A partition is paused while its set of reasons is non-empty. The set is
/// desired state, derived by its owner from the shard's whole state and set whole
/// (``KafkaConsumer/setPauseReasons(_:for:)``), never added and removed piecemeal (docs/architecture.md §5).
public struct KafkaPauseReason: Hashable, Sendable, CustomStringConvertible {
    /// The reason's name, as logs and the admin API show it.
    public let name: String

    /// Creates a reason; prefer the predefined ones.
    public init(_ name: String) { self.name = name }

    /// The flag of the topic or partition is off.
    public static let flag = KafkaPauseReason("flag")
    /// The circuit breaker holds the shard (backing off or tripped).
    public static let breaker = KafkaPauseReason("breaker")
    /// Too much work is in flight in the shard's pipeline.
    public static let backpressure = KafkaPauseReason("backpressure")
    /// A retry topic's partition waits until its next message is due (`onFailure.then: retryLater`).
    public static let retryDelay = KafkaPauseReason("retryDelay")
    /// The shard is draining before it stops.
    public static let draining = KafkaPauseReason("draining")
    /// The shard is held at a message that crashed its handler or the process.
    public static let quarantine = KafkaPauseReason("quarantine")
    /// An operator paused it by hand.
    public static let `operator` = KafkaPauseReason("operator")
    /// The consumer's own buffer for the partition is full (set and cleared by the consumer).
    public static let flowControl = KafkaPauseReason("flowControl")

    public var description: String { name }
}
