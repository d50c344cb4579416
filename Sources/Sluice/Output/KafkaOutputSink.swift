import Instrumentation
import Metrics
import SluiceKafka
import Synchronization

/// Writes handlers' output with the host's shared producer (at least once, see ``OutputSink``).
///
/// Before a topic's first record it checks the topic's name and that the cluster has it: a record for a topic that
/// does not exist would otherwise wait in librdkafka until its message timeout, far past `handlerTimeout` (or create
/// the topic with the broker's defaults, where the broker creates topics on request: Sluice creates none). With
/// tracing on, each record carries the handler call's trace context.
final class KafkaOutputSink: OutputSink {
    let producer: SharedProducer
    /// Puts the handler call's trace context into the records' headers (nil: tracing off).
    let instrument: (any Instrument)?
    let metrics: OutputMetrics
    let topics = OutputTopics()

    init(producer: SharedProducer, instrument: (any Instrument)?, metricsFactory: any MetricsFactory) {
        self.producer = producer
        self.instrument = instrument
        self.metrics = OutputMetrics(factory: metricsFactory)
    }

    func send(_ records: [ProducerRecord]) async throws {
        let producer = try producer.producer()
        try await topics.check(records, producer: producer)
        var records = records
        OutputTopics.injectTrace(into: &records, with: instrument)
        let outcomes = await producer.sendAll(records)
        var firstFailure: (topic: String, error: KafkaError)?
        for (record, outcome) in zip(records, outcomes) {
            switch outcome {
            case .success: metrics.written(to: record.topic)
            case .failure(let error):
                metrics.failed(to: record.topic)
                if firstFailure == nil { firstFailure = (record.topic, error) }
            }
        }
        if let (topic, error) = firstFailure {
            let failures = outcomes.count { if case .failure = $0 { true } else { false } }
            throw SluiceError(
                code: .output,
                message:
                    "context.send: \(failures) of \(records.count) record(s) not written; the first, to topic '\(topic)': \(error)"
            )
        }
    }
}

/// The topics handlers write to: each checked once (its name, and that the cluster has it) before its first record.
final class OutputTopics: Sendable {
    /// Topics the cluster was seen to have.
    private let known = Mutex<Set<String>>([])

    /// Throws ``SluiceError`` (code ``SluiceError/Code/output``) naming the first of `records`' topics that is not
    /// a topic name or that the cluster does not have.
    func check(_ records: [ProducerRecord], producer: KafkaProducer) async throws {
        // Per send: no allocation once every topic is known (an empty array allocates nothing).
        let unknown = known.withLock { known in
            var unknown: [String] = []
            for record in records where !known.contains(record.topic) && !unknown.contains(record.topic) {
                unknown.append(record.topic)
            }
            return unknown
        }
        for topic in unknown.sorted() {
            if let problem = TopicName.problem(topic) {
                throw SluiceError(code: .output, message: "context.send: topic \(TopicName.quoted(topic)): \(problem)")
            }
            let exists: Bool
            do {
                exists = try await producer.topicExists(topic, timeout: .seconds(5))
            } catch {
                throw SluiceError(
                    code: .output,
                    message: "context.send: topic '\(topic)': the cluster's topics cannot be read: \(error)")
            }
            guard exists else {
                throw SluiceError(
                    code: .output,
                    message:
                        "context.send: topic '\(topic)' does not exist in the cluster; create it (Sluice does not create topics)"
                )
            }
            known.withLock { _ = $0.insert(topic) }
        }
    }

    /// Puts the handler call's trace context (the current one) into each record's headers; nothing without an
    /// instrument (tracing off).
    static func injectTrace(into records: inout [ProducerRecord], with instrument: (any Instrument)?) {
        guard let instrument else { return }
        for index in records.indices { MessageTracing.inject(into: &records[index].headers, with: instrument) }
    }
}

/// `sluice_output_records_total` and `sluice_output_failures_total` by output topic, for at most
/// ``maximumTopics`` topics (the rest count as `topic="other"`: a handler that names topics after its input
/// cannot grow the metrics without bound).
final class OutputMetrics: Sendable {
    static let maximumTopics = 256

    private let factory: any MetricsFactory
    private let counters = Mutex<[String: (written: Counter, failed: Counter)]>([:])

    init(factory: any MetricsFactory) { self.factory = factory }

    func written(to topic: String) { self.counters(for: topic).written.increment() }

    func failed(to topic: String) { self.counters(for: topic).failed.increment() }

    private func counters(for topic: String) -> (written: Counter, failed: Counter) {
        counters.withLock { counters in
            if let existing = counters[topic] { return existing }
            let label = counters.count < Self.maximumTopics ? topic : "other"
            if let existing = counters[label] { return existing }
            let created = (
                written: Counter(
                    label: "sluice_output_records_total", dimensions: [("topic", label)], factory: factory),
                failed: Counter(label: "sluice_output_failures_total", dimensions: [("topic", label)], factory: factory)
            )
            counters[label] = created
            return created
        }
    }
}
