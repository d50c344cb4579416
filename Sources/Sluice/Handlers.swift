import Logging
import SluiceKafka

/// Handles one message at a time. Throwing fails the message; the topic's `onFailure` policy decides
/// what happens next (retry, then stop, dead-letter or skip).
public protocol MessageHandler: Sendable {
    /// Handles `message`. Called concurrently for different messages when the topic's ordering allows.
    func handle(_ message: Message, context: ShardContext) async throws
}

/// Handles batches of messages (`batch: {size, timeout}` in the topic's configuration). Throwing fails
/// the whole batch.
public protocol BatchHandler: Sendable {
    /// Handles `batch`, which holds messages of one partition in offset order.
    func handle(_ batch: [Message], context: ShardContext) async throws
}

/// What a handler knows about the shard it runs in.
public struct ShardContext: Sendable {
    /// The shard's partition.
    public let topicPartition: TopicPartition
    /// Which assignment of the partition to this host the shard belongs to (increases per assignment).
    public let generation: UInt64
    /// The delivery attempt of the current message or batch, from 1.
    public let attempt: Int
    /// A logger with the shard's metadata.
    public let logger: Logger
    /// Where ``send(_:)`` writes (the host's producer).
    let output: (any OutputSink)?

    /// This context with its sends going to `output`.
    func with(output: any OutputSink) -> ShardContext {
        ShardContext(
            topicPartition: topicPartition, generation: generation, attempt: attempt, logger: logger, output: output)
    }
}

/// A registered handler of either kind.
enum AnyHandler: Sendable {
    case message(any MessageHandler)
    case batch(any BatchHandler)

    func handle(_ unit: ArraySlice<Message>, context: ShardContext) async throws {
        switch self {
        case .message(let handler):
            for message in unit { try await handler.handle(message, context: context) }
        case .batch(let handler):
            try await handler.handle(Array(unit), context: context)
        }
    }
}
