import InMemoryTracing
import SluiceKafka
import Testing
import Tracing

@testable import Sluice

@Suite("Tracing: a span per handler call, continuing the producer's trace", .timeLimit(.minutes(1)))
struct TracingTests {
    /// Headers a producer traced with the same tracer would have written.
    static func traced(_ messages: [Message], trace: String, span: String) -> [Message] {
        messages.map { message in
            var message = message
            message.headers = [
                KafkaHeader(key: InMemoryTracer.traceIDKey, value: Array(trace.utf8)),
                KafkaHeader(key: InMemoryTracer.spanIDKey, value: Array(span.utf8)),
            ]
            return message
        }
    }

    @Test(
        "each handled message gets a consumer span whose parent is the producer's span, with the messaging attributes; the handler runs inside it"
    )
    func spanPerMessage() async throws {
        let tracer = InMemoryTracer()
        let insideTrace = Locked<[String]>([])
        let pipeline = PipelineFixture.pipeline(
            TopicConfiguration(),
            handler: .message(
                ClosureHandler { _, _ in
                    // Child spans a handler starts join the trace: the current context is the process span's.
                    var carrier: [KafkaHeader] = []
                    tracer.inject(ServiceContext.current ?? .topLevel, into: &carrier, using: KafkaHeaderInjector())
                    let trace = KafkaHeaderExtractor().extract(key: InMemoryTracer.traceIDKey, from: carrier)
                    insideTrace.withLock { $0.append(trace ?? "-") }
                }), tracer: tracer)
        let messages = Self.traced(PipelineFixture.messages(0..<3), trace: "trace-1", span: "producer-span")
        #expect(await pipeline.run(source: PipelineFixture.source([messages])) == .sourceEnded(drainTimedOut: false))
        let spans = tracer.finishedSpans
        #expect(spans.count == 3)
        for (index, span) in spans.enumerated() {
            #expect(span.operationName == "process t" && span.kind == .consumer)
            #expect(span.traceID == "trace-1" && span.parentSpanID == "producer-span", "the producer's trace continues")
            #expect(span.attributes["messaging.system"]?.toSpanAttribute() == "kafka")
            #expect(span.attributes["messaging.destination.partition.id"]?.toSpanAttribute() == "0")
            #expect(span.attributes["messaging.consumer.group.name"]?.toSpanAttribute() == "g")
            #expect(span.attributes["messaging.kafka.offset"]?.toSpanAttribute() == .int64(Int64(index)))
        }
        #expect(insideTrace.value == ["trace-1", "trace-1", "trace-1"])
    }

    @Test("a failing call records its error on the span; the dead-letter write gets a producer span in the same trace")
    func failureAndDeadLetter() async throws {
        struct Refused: Error {}
        let tracer = InMemoryTracer()
        var configuration = TopicConfiguration()
        // No backoff: the retry follows at once on the test's still clock.
        configuration.onFailure = .init(retries: 1, backoff: .init(initial: .zero, maximum: .zero), then: .deadLetter)
        configuration.deadLetterTopic = "t.dlq"
        let pipeline = PipelineFixture.pipeline(
            configuration, handler: .message(ClosureHandler { _, _ in throw Refused() }),
            deadLetters: RecordingDeadLetters(), tracer: tracer)
        let messages = Self.traced(PipelineFixture.messages(0..<1), trace: "trace-2", span: "producer-span")
        #expect(await pipeline.run(source: PipelineFixture.source([messages])) == .sourceEnded(drainTimedOut: false))
        let spans = tracer.finishedSpans
        let process = spans.filter { $0.operationName == "process t" }
        #expect(process.count == 2, "the first call and the retry")
        #expect(process.allSatisfy { !$0.errors.isEmpty && $0.traceID == "trace-2" })
        #expect(process.last?.attributes["messaging.delivery.attempt"]?.toSpanAttribute() == .int64(2))
        let send = try #require(spans.first { $0.operationName == "send t.dlq" })
        #expect(send.kind == .producer && send.traceID == "trace-2")
    }

    @Test("a batch call gets one span linking every message's context")
    func batchLinks() async throws {
        let tracer = InMemoryTracer()
        var configuration = TopicConfiguration()
        configuration.batch = .init(size: 3, timeout: .milliseconds(5))
        let pipeline = PipelineFixture.pipeline(
            configuration, handler: .batch(ClosureBatchHandler { _, _ in }), tracer: tracer)
        let messages = Self.traced(PipelineFixture.messages(0..<3), trace: "trace-3", span: "producer-span")
        #expect(await pipeline.run(source: PipelineFixture.source([messages])) == .sourceEnded(drainTimedOut: false))
        let span = try #require(tracer.finishedSpans.first)
        #expect(tracer.finishedSpans.count == 1)
        #expect(span.links.count == 3)
        #expect(span.attributes["messaging.batch.message_count"]?.toSpanAttribute() == .int64(3))
    }

    @Test("with no tracer bootstrapped, tracing is off")
    func offByDefault() {
        #expect(MessageTracing.bootstrapped() == nil)
    }
}
