import Logging
import Sluice
import SluiceKafka
import Synchronization

/// Runs a handler against messages in-process, without Kafka, through the same pipeline a host runs for
/// each shard, and reports what the host would do with each message: handled, retried, dead-lettered,
/// skipped, or not committed because the shard stopped.
///
/// ```swift
/// var orders = TopicConfiguration()
/// orders.onFailure = .init(retries: 3, then: .deadLetter)
/// orders.deadLetterTopic = "orders.dlq"
/// let run = await HandlerHarness(topic: "orders", configuration: orders, handler: OrderHandler())
///     .run(TestMessages.values(["{\"key\":\"a\",\"seq\":1,\"n\":0}", "not json"]))
/// #expect(run[0] == .handled(attempts: 1))
/// #expect(run[1] == .deadLettered(attempts: 4))
/// ```
///
/// Retry backoff delays are skipped (the outcome is the same, the test is fast); `handlerTimeout` is real
/// time. Ordering, batching, failure policies and the offsets committed are the host's own.
public struct HandlerHarness: Sendable {
    /// What became of one message.
    public enum Fate: Sendable, Equatable, CustomStringConvertible {
        /// The handler succeeded, after `attempts` calls.
        case handled(attempts: Int)
        /// The handler failed `attempts` times and the message went to the dead-letter topic.
        case deadLettered(attempts: Int)
        /// The handler failed `attempts` times and the message was skipped (`onFailure.then: skip`).
        case skipped(attempts: Int)
        /// The shard stopped before it was done (a failure with `then: stop`, a handler timeout, or a
        /// message behind one): it is not committed and is delivered again after the restart.
        case notCommitted

        public var description: String {
            switch self {
            case .handled(let attempts): "handled after \(attempts) call(s)"
            case .deadLettered(let attempts): "dead-lettered after \(attempts) call(s)"
            case .skipped(let attempts): "skipped after \(attempts) call(s)"
            case .notCommitted: "not committed"
            }
        }
    }

    /// The outcome of a run.
    public struct Run: Sendable {
        /// Each message's fate, by offset.
        public var fates: [Int64: Fate]
        /// What the host would commit (the next offset to read), nil if nothing was done.
        public var committedOffset: Int64?
        /// Why the shard stopped, if it did: the host restarts it with backoff (or trips it).
        public var crash: ShardCrash?
        /// Dead-lettered messages with the error they carry (`sluice.error`).
        public var deadLetters: [(message: Message, error: String)]
        /// What the handler wrote with `context.send`, in order, from every call (a retried call's records are
        /// here once per call, as a host writes them: at least once).
        public var output: [ProducerRecord]

        /// The fate of the message at `offset`.
        public subscript(offset: Int64) -> Fate? { fates[offset] }
    }

    let topicPartition: TopicPartition
    let configuration: TopicConfiguration
    private let messageHandler: (any MessageHandler)?
    private let batchHandler: (any BatchHandler)?

    /// A harness for a one-message-at-a-time handler of `topic`'s partition `partition`.
    public init(
        topic: String = "test", partition: Int32 = 0, configuration: TopicConfiguration = TopicConfiguration(),
        handler: some MessageHandler
    ) {
        topicPartition = TopicPartition(topic, partition)
        self.configuration = configuration
        messageHandler = handler
        batchHandler = nil
    }

    /// A harness for a batch handler; `configuration.batch` sets the batches (default 100, 10 ms).
    public init(
        topic: String = "test", partition: Int32 = 0, configuration: TopicConfiguration = TopicConfiguration(),
        batchHandler: some BatchHandler
    ) {
        topicPartition = TopicPartition(topic, partition)
        var configuration = configuration
        if configuration.batch == nil { configuration.batch = .init(size: 100, timeout: .milliseconds(10)) }
        self.configuration = configuration
        messageHandler = nil
        self.batchHandler = batchHandler
    }

    /// Runs `messages` (of this harness's partition, in offset order) and reports their fates.
    ///
    /// The handler's `context.send` goes to `output` (records it accepted are in ``Run/output``): nil accepts every
    /// record; a test's own sink can fail some, to see what the topic's `onFailure` makes of a failed write.
    public func run(
        _ messages: [Message], output: (any OutputSink)? = nil, logger: Logger = Logger(label: "sluice.testing")
    ) async -> Run {
        let calls = Calls()
        var configuration = configuration
        // The harness's clock stands still: retries follow at once.
        configuration.onFailure.backoff = .init(initial: .zero, maximum: .zero)
        let deadLetters = RecordingDeadLetters()
        let recordedOutput = RecordingOutput(inner: output)
        let result = await PipelineSimulation.run(
            topicPartition: topicPartition, configuration: configuration,
            messageHandler: messageHandler.map { CountingMessageHandler(inner: $0, calls: calls) },
            batchHandler: batchHandler.map { CountingBatchHandler(inner: $0, calls: calls) },
            messages: messages, deadLetters: deadLetters, output: recordedOutput, clock: ManualHostClock(),
            logger: logger)
        let written = deadLetters.written.withLock { $0 }
        let deadLettered = Set(written.map(\.message.offset))
        let (attempts, succeeded) = calls.state.withLock { ($0.attempts, $0.succeeded) }
        var fates: [Int64: Fate] = [:]
        for message in messages {
            let offset = message.offset
            let tries = attempts[offset] ?? 0
            if succeeded.contains(offset) {
                fates[offset] = .handled(attempts: tries)
            } else if deadLettered.contains(offset) {
                fates[offset] = .deadLettered(attempts: tries)
            } else if let committed = result.committedOffset, offset < committed {
                fates[offset] = .skipped(attempts: tries)
            } else {
                fates[offset] = .notCommitted
            }
        }
        return Run(
            fates: fates, committedOffset: result.committedOffset, crash: result.crash, deadLetters: written,
            output: recordedOutput.written.withLock { $0 })
    }
}

/// Builds test messages: sequential offsets from 0 in one partition.
public enum TestMessages {
    /// Messages with these values (UTF-8), keys `keys[i]` when given, offsets from `firstOffset`.
    public static func values(
        _ values: [String], keys: [String]? = nil, topic: String = "test", partition: Int32 = 0, firstOffset: Int64 = 0,
        headers: [KafkaHeader] = []
    ) -> [Message] {
        values.enumerated().map { index, value in
            Message(
                topic: topic, partition: partition, offset: firstOffset + Int64(index),
                key: keys.map { KafkaBytes($0[index % $0.count]) },
                value: KafkaBytes(value), headers: headers)
        }
    }
}

// MARK: Recording

private final class Calls: Sendable {
    let state = Mutex<(attempts: [Int64: Int], succeeded: Set<Int64>)>(([:], []))

    func record(_ offsets: [Int64], succeeded: Bool) {
        state.withLock { state in
            for offset in offsets {
                state.attempts[offset, default: 0] += 1
                if succeeded { state.succeeded.insert(offset) }
            }
        }
    }
}

private struct CountingMessageHandler: MessageHandler {
    let inner: any MessageHandler
    let calls: Calls

    func handle(_ message: Message, context: ShardContext) async throws {
        do {
            try await inner.handle(message, context: context)
            calls.record([message.offset], succeeded: true)
        } catch {
            calls.record([message.offset], succeeded: false)
            throw error
        }
    }
}

private struct CountingBatchHandler: BatchHandler {
    let inner: any BatchHandler
    let calls: Calls

    func handle(_ batch: [Message], context: ShardContext) async throws {
        do {
            try await inner.handle(batch, context: context)
            calls.record(batch.map(\.offset), succeeded: true)
        } catch {
            calls.record(batch.map(\.offset), succeeded: false)
            throw error
        }
    }
}

private final class RecordingOutput: OutputSink {
    let inner: (any OutputSink)?
    let written = Mutex<[ProducerRecord]>([])

    init(inner: (any OutputSink)?) { self.inner = inner }

    func send(_ records: [ProducerRecord]) async throws {
        try await inner?.send(records)
        written.withLock { $0 += records }
    }
}

private final class RecordingDeadLetters: DeadLetterSink {
    let written = Mutex<[(message: Message, error: String)]>([])

    func deadLetter(_ message: Message, error: any Error, attempts: Int, topic: String) async throws {
        let description = String(describing: error)
        written.withLock { $0.append((message, description)) }
    }
}
