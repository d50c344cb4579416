import Logging
import OrderTracing
import ServiceLifecycle
import Sluice
import SluiceKafka
import SluiceTesting
import Testing

/// swift-otel bootstrapped as `OrderTracing` does it, exporting to a collector on loopback: a producer's
/// `traceparent` continues in the handler's span, and a dead-letter write is a span of the same trace.
@Suite struct OrderTracingTests {
    static let trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let producerSpan = "00f067aa0ba902b7"

    struct FailingOnBadOrders: MessageHandler {
        struct BadOrder: Error {}

        func handle(_ message: Message, context: ShardContext) async throws {
            if String(decoding: message.value, as: UTF8.self) == "bad" { throw BadOrder() }
        }
    }

    @Test("a trace a producer started (W3C traceparent) continues in the handler's span and the dead-letter write")
    func traceparentContinues() async throws {
        let collector = try await OTLPCollector.start()
        let tracing = try OrderTracing.bootstrap(
            serviceName: "order-tracing-test", endpoint: "http://127.0.0.1:\(collector.port)/v1/traces",
            exportInterval: .milliseconds(50))
        let group = ServiceGroup(services: [tracing], logger: Logger(label: "test"))
        let exporting = Task { try await group.run() }

        var orders = TopicConfiguration()
        orders.onFailure = .init(retries: 1, then: .deadLetter)
        orders.deadLetterTopic = "orders.dlq"
        let traceparent = KafkaHeader(key: "traceparent", value: Array("00-\(Self.trace)-\(Self.producerSpan)-01".utf8))
        let run = await HandlerHarness(topic: "orders", configuration: orders, handler: FailingOnBadOrders())
            .run(TestMessages.values(["good", "bad"], keys: ["customer-1"], headers: [traceparent]))
        #expect(run[0] == .handled(attempts: 1))
        #expect(run[1] == .deadLettered(attempts: 2))

        // A graceful shutdown exports what is left.
        await group.triggerGracefulShutdown()
        try await exporting.value
        try await collector.stop()

        let spans = collector.spans
        let handled = spans.filter { $0.name == "process orders" }
        // good once, bad twice (the first call and its one retry)
        #expect(handled.count == 3, "\(spans.map(\.name))")
        for span in handled {
            #expect(span.traceID == Self.trace)
            #expect(span.parentSpanID == Self.producerSpan)
            #expect(span.attributes["messaging.system"] == "kafka")
            #expect(span.attributes["messaging.destination.name"] == "orders")
            #expect(span.attributes["messaging.destination.partition.id"] == "0")
            #expect(span.attributes["messaging.kafka.message.key"] == "customer-1")
        }
        #expect(Set(handled.compactMap { $0.attributes["messaging.kafka.offset"] }) == ["0", "1"])
        let deadLetter = try #require(spans.first { $0.name == "send orders.dlq" }, "\(spans.map(\.name))")
        #expect(deadLetter.traceID == Self.trace)
        #expect(deadLetter.attributes["messaging.destination.name"] == "orders.dlq")
    }
}
