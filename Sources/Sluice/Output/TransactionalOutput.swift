import Instrumentation
import SluiceKafka
import Synchronization

/// The records of the handler call running in this task, for a topic with `output: exactlyOnce`: the call keeps
/// them once it succeeded (held for the shard's transaction) and drops them when it failed, timed out or was
/// abandoned, so a retried call's output is written once.
final class CallOutput: Sendable {
    @TaskLocal static var current: CallOutput?

    private let records = Mutex<[ProducerRecord]>([])

    func append(_ more: [ProducerRecord]) { records.withLock { $0 += more } }

    /// The records, and no more from now on (an abandoned task that sends later adds to nothing anyone reads).
    func take() -> [ProducerRecord] {
        records.withLock { records in
            defer { records.removeAll() }
            return records
        }
    }
}

/// `context.send` of a topic with `output: exactlyOnce`: the records join the call's ``CallOutput`` (after the
/// checks every send makes) and reach Kafka in the shard's transaction with the message's offset.
struct TransactionalOutputSink: OutputSink {
    /// The host's producer, asked which topics exist.
    let producer: SharedProducer
    let topics: OutputTopics
    let instrument: (any Instrument)?

    func send(_ records: [ProducerRecord]) async throws {
        guard let call = CallOutput.current else {
            throw SluiceError(
                code: .output,
                message:
                    "context.send outside a handler call (in a detached task?): exactly-once output belongs to the call of its message"
            )
        }
        try await topics.check(records, producer: producer.producer())
        var records = records
        OutputTopics.injectTrace(into: &records, with: instrument)
        call.append(records)
    }
}

/// Dead letters of a topic with `output: exactlyOnce`: in the shard's transaction, with the dead-lettered
/// message's offset (a dead letter is written exactly when its message counts as done).
struct TransactionalDeadLetterSink: DeadLetterSink {
    let transaction: ShardTransaction
    let instrument: (any Instrument)?

    func deadLetter(_ message: Message, error: any Error, attempts: Int, topic: String) async throws {
        transaction.hold(
            [
                KafkaDeadLetterSink.record(
                    message, error: error, attempts: attempts, topic: topic, instrument: instrument)
            ],
            through: message.offset)
    }
}

/// What a host gives its exactly-once shards: a transaction per pipeline, and the sink that holds a call's records
/// for it.
struct ExactlyOnceOutput: Sendable {
    var transactions: ShardTransaction.Factory
    var sink: TransactionalOutputSink
    /// Puts trace context into dead letters' headers (nil: tracing off).
    var instrument: (any Instrument)?
}
