import Instrumentation
import SluiceKafka

/// Writes failed messages to a dead-letter topic with the original key, value and headers, plus:
/// `sluice.error`, `sluice.source.topic`, `sluice.source.partition`, `sluice.source.offset` and
/// `sluice.attempts`. Returns once the broker acknowledged the write.
struct KafkaDeadLetterSink: DeadLetterSink {
    let producer: SharedProducer
    /// Puts the dead-letter write's trace context into the records' headers (nil: tracing off).
    let instrument: (any Instrument)?

    func deadLetter(_ message: Message, error: any Error, attempts: Int, topic: String) async throws {
        _ = try await producer.producer().send(
            Self.record(message, error: error, attempts: attempts, topic: topic, instrument: instrument))
    }

    /// Enqueues the whole batch before waiting, so it goes out in one round trip (per leader), not one per
    /// message; each message's acknowledgement is reported on its own.
    func deadLetter(_ messages: [Message], error: any Error, attempts: Int, topic: String) async -> [(any Error)?] {
        let producer: KafkaProducer
        do {
            producer = try self.producer.producer()
        } catch {
            return Array(repeating: error, count: messages.count)
        }
        let records = messages.map {
            Self.record($0, error: error, attempts: attempts, topic: topic, instrument: instrument)
        }
        return await producer.sendAll(records).map { outcome -> (any Error)? in
            if case .failure(let error) = outcome { return error }
            return nil
        }
    }

    /// The dead-letter record of `message`: its key, value and headers, plus what went wrong.
    static func record(
        _ message: Message, error: any Error, attempts: Int, topic: String, instrument: (any Instrument)?
    ) -> ProducerRecord {
        var headers = message.headers
        headers.append(KafkaHeader(key: "sluice.error", value: Array(String(describing: error).utf8)))
        headers.append(KafkaHeader(key: "sluice.source.topic", value: Array(message.topic.utf8)))
        headers.append(KafkaHeader(key: "sluice.source.partition", value: Array(String(message.partition).utf8)))
        headers.append(KafkaHeader(key: "sluice.source.offset", value: Array(String(message.offset).utf8)))
        headers.append(KafkaHeader(key: "sluice.attempts", value: Array(String(attempts).utf8)))
        // The dead-letter write's span (when tracing is on) replaces the original trace headers.
        if let instrument { MessageTracing.inject(into: &headers, with: instrument) }
        if let killed = error as? MessageKilledProcess {
            // What the crash journal found: the message's handler call killed the process.
            let quarantine = killed.quarantine
            headers.append(KafkaHeader(key: "sluice.crash.signal", value: Array(quarantine.signal.utf8)))
            headers.append(KafkaHeader(key: "sluice.crash.count", value: Array(String(quarantine.crashes).utf8)))
            headers.append(KafkaHeader(key: "sluice.crash.host", value: Array(quarantine.host.utf8)))
            headers.append(
                KafkaHeader(key: "sluice.crash.atMillis", value: Array(String(quarantine.atMilliseconds).utf8)))
            if let report = quarantine.report {
                headers.append(KafkaHeader(key: "sluice.crash.report", value: Array(report.utf8)))
            }
        }
        return ProducerRecord(
            topic: topic, key: message.key.map { Array($0) }, value: Array(message.value), headers: headers)
    }
}
