import Instrumentation
import SluiceKafka
import Synchronization

/// The records of one handler call of a topic with `output: exactlyOnce`: the call keeps them once it succeeded
/// (held for the shard's transaction) and drops them when it failed, timed out or was abandoned, so a retried call's
/// output is written once.
final class CallOutput: Sendable {
    private let state = Mutex<(records: [ProducerRecord], ended: Bool)>(([], false))

    /// Adds `more`, unless the call already ended (a task the handler left running sends after it returned).
    func append(_ more: [ProducerRecord]) throws {
        let ended = state.withLock { state in
            if !state.ended { state.records += more }
            return state.ended
        }
        if ended {
            throw SluiceError(
                code: .output,
                message:
                    "context.send after its handler call ended (from a task the handler left running?): exactly-once output belongs to the call of its message"
            )
        }
    }

    /// The records; the call has ended, and later sends fail.
    func take() -> [ProducerRecord] {
        state.withLock { state in
            defer {
                state.records.removeAll()
                state.ended = true
            }
            return state.records
        }
    }
}

/// `context.send` of a topic with `output: exactlyOnce`: the checks every send makes, then the records join the
/// call's ``CallOutput`` and reach Kafka in the shard's transaction with the message's offset. The host's has no
/// call; each handler call gets one bound to its own (``bound(to:)``).
struct TransactionalOutputSink: OutputSink {
    /// The host's producer, asked which topics exist.
    let producer: SharedProducer
    let topics: OutputTopics
    let instrument: (any Instrument)?
    var call: CallOutput? = nil

    /// This sink for one handler call.
    func bound(to call: CallOutput) -> TransactionalOutputSink {
        var bound = self
        bound.call = call
        return bound
    }

    func send(_ records: [ProducerRecord]) async throws {
        guard let call else {
            throw SluiceError(code: .output, message: "context.send outside a handler call")
        }
        try await topics.check(records, producer: producer.producer())
        var records = records
        OutputTopics.injectTrace(into: &records, with: instrument)
        try call.append(records)
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
