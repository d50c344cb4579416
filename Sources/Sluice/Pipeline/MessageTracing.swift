import Instrumentation
import SluiceKafka
import Tracing

/// Spans for handled messages (OpenTelemetry messaging conventions): one `process TOPIC` consumer span per
/// handler call, its parent the trace context the tracer finds in the message's headers (a W3C
/// `traceparent` for an OpenTelemetry tracer), so a trace a producer started continues in the handler. A batch
/// call's span links every message's context instead. Off (not a single extra call per message) until a
/// tracer is bootstrapped with `InstrumentationSystem.bootstrap`.
struct MessageTracing: Sendable {
    let tracer: any Tracer
    let topicPartition: TopicPartition
    let group: String?

    /// The bootstrapped tracer, or nil while tracing is off.
    static func bootstrapped() -> (any Tracer)? {
        let tracer = InstrumentationSystem.tracer
        return tracer is NoOpTracer ? nil : tracer
    }

    /// Runs a handler call for `unit` inside its span; an error is recorded on the span and rethrown.
    func traced<Unit: Collection<Message>>(_ unit: Unit, attempt: Int, _ body: () async throws -> Void) async throws {
        var parent = ServiceContext.topLevel
        if unit.count == 1, let message = unit.first {
            tracer.extract(message.headers, into: &parent, using: KafkaHeaderExtractor())
        }
        try await tracer.withSpan("process \(topicPartition.topic)", context: parent, ofKind: .consumer) { span in
            span.attributes["messaging.system"] = "kafka"
            span.attributes["messaging.operation.type"] = "process"
            span.attributes["messaging.destination.name"] = topicPartition.topic
            span.attributes["messaging.destination.partition.id"] = "\(topicPartition.partition)"
            if let group { span.attributes["messaging.consumer.group.name"] = group }
            if unit.count == 1, let message = unit.first {
                span.attributes["messaging.kafka.offset"] = Int(message.offset)
                // The key only when it is text (binary keys are not for trace backends).
                if let key = message.key, let text = String(validating: Array(key), as: UTF8.self),
                    text.utf8.count <= 256
                {
                    span.attributes["messaging.kafka.message.key"] = text
                }
            } else {
                span.attributes["messaging.batch.message_count"] = unit.count
                for message in unit {
                    var context = ServiceContext.topLevel
                    tracer.extract(message.headers, into: &context, using: KafkaHeaderExtractor())
                    span.addLink(SpanLink(context: context, attributes: [:]))
                }
            }
            if attempt > 1 { span.attributes["messaging.delivery.attempt"] = attempt }
            try await body()
        }
    }

    /// Runs a dead-letter write inside a `send DLT_TOPIC` producer span whose parent is the first message's
    /// context; the sink puts the span's context into the records' headers.
    func tracedDeadLetter<R>(_ unit: ArraySlice<Message>, topic: String, _ body: () async -> R) async -> R {
        var parent = ServiceContext.topLevel
        if let message = unit.first { tracer.extract(message.headers, into: &parent, using: KafkaHeaderExtractor()) }
        return await tracer.withSpan("send \(topic)", context: parent, ofKind: .producer) { span in
            span.attributes["messaging.system"] = "kafka"
            span.attributes["messaging.operation.type"] = "send"
            span.attributes["messaging.destination.name"] = topic
            span.attributes["messaging.batch.message_count"] = unit.count
            return await body()
        }
    }

    /// Puts the current trace context into dead-letter headers (the dead-letter consumer's trace continues
    /// from the failed call).
    static func inject(into headers: inout [KafkaHeader], with instrument: any Instrument) {
        guard let context = ServiceContext.current else { return }
        instrument.inject(context, into: &headers, using: KafkaHeaderInjector())
    }
}

/// Reads trace context from Kafka record headers (the last header of a name wins).
struct KafkaHeaderExtractor: Extractor {
    func extract(key: String, from carrier: [KafkaHeader]) -> String? {
        carrier.last { $0.key == key }?.value.map { String(decoding: $0, as: UTF8.self) }
    }
}

/// Writes trace context into Kafka record headers, replacing a header of the same name.
struct KafkaHeaderInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [KafkaHeader]) {
        carrier.removeAll { $0.key == key }
        carrier.append(KafkaHeader(key: key, value: Array(value.utf8)))
    }
}
