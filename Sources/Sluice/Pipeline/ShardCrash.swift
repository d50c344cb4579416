import SluiceKafka

/// Why a shard's pipeline crashed: the shard stops at ``offset`` and commits nothing past it.
public struct ShardCrash: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of crash.
    public enum Reason: Sendable, Hashable {
        /// The handler kept failing and the policy is `stop`.
        case handlerFailed(String)
        /// A handler call ran longer than `handlerTimeout`.
        case handlerTimeout(Duration)
        /// Writing to the dead-letter topic failed.
        case deadLetterFailed(String)
        /// The message killed the process (a trap in its handler) and is quarantined with `onCrash.then:
        /// stop`: the shard is held at it.
        case quarantined(String)
        /// The shard's transaction (`output: exactlyOnce`) failed and was aborted: its output and offsets since
        /// the last commit are discarded, and the shard handles those messages again.
        case transactionFailed(String)
    }

    /// What happened.
    public let reason: Reason
    /// The first offset that was not done.
    public let offset: Int64

    public var description: String {
        switch reason {
        case .handlerFailed(let error): "handler failed at offset \(offset): \(error)"
        case .handlerTimeout(let limit): "handler ran longer than \(limit) at offset \(offset)"
        case .deadLetterFailed(let error): "dead-letter write failed at offset \(offset): \(error)"
        case .quarantined(let summary): "quarantined at offset \(offset): \(summary)"
        case .transactionFailed(let error): "transaction aborted; handled again from offset \(offset): \(error)"
        }
    }
}

/// Where a shard writes messages that failed for good, when its policy is `deadLetter`.
public protocol DeadLetterSink: Sendable {
    /// Writes `message` to `topic` with headers naming the error, the source partition and offset and the
    /// number of attempts; returns once the broker acknowledged it.
    func deadLetter(_ message: Message, error: any Error, attempts: Int, topic: String) async throws

    /// Writes a failed batch: every message at once (one round trip), then waits for each acknowledgement.
    /// Returns, per message, nil when it was written or the error that kept it out. The default writes one
    /// message after the other and stops at the first failure.
    func deadLetter(_ messages: [Message], error: any Error, attempts: Int, topic: String) async -> [(any Error)?]
}

extension DeadLetterSink {
    /// Writes one message after the other and stops at the first failure (the rest report that failure).
    public func deadLetter(_ messages: [Message], error: any Error, attempts: Int, topic: String) async -> [(
        any Error
    )?] {
        var outcomes: [(any Error)?] = []
        for message in messages {
            if let failure = outcomes.lazy.compactMap({ $0 }).first {
                outcomes.append(failure)
                continue
            }
            do {
                try await deadLetter(message, error: error, attempts: attempts, topic: topic)
                outcomes.append(nil)
            } catch {
                outcomes.append(error)
            }
        }
        return outcomes
    }
}

/// Where a pipeline says whether it wants its partition paused, and why: back-pressure, or a retry topic's head
/// not due yet. It states a level per reason, not a delta: the supervisor folds it into the shard's desired
/// pause set while that pipeline is current, and drops it when the pipeline ends.
protocol ShardFlowControl: Sendable {
    func setPaused(_ reason: KafkaPauseReason, _ on: Bool, pipeline: UInt64)
}
