import InMemoryTracing
import MetricsTestKit
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

/// What a host needs from outside is handed to it, not read from process-wide state: two hosts in one process
/// (or two tests) do not share metrics or traces by accident.
@Suite("A host's metrics factory and tracer are its own", .timeLimit(.minutes(2)))
struct HostInjectionTests {
    @Test(
        "two hosts in one process, each with its own metrics factory and tracer: each counts and traces only what it handled"
    )
    func twoHostsTwoFactories() async throws {
        var configuration = SluiceConfiguration(
            kafka: .init(bootstrap: "unused:1", group: "g"), topics: ["orders": TopicConfiguration()])
        configuration.flags.pollInterval = .seconds(3_600)
        let hosts = [5, 7].map { count in
            let metrics = TestMetrics()
            let tracer = InMemoryTracer()
            let host = SluiceHost(
                configuration: configuration, logger: HostFixture.logger, clock: SystemHostClock(),
                metricsFactory: metrics, tracer: tracer)
            let handled = HandledMessages()
            host.register("orders", ClosureHandler { message, _ in handled.append(message) })
            return (count: count, host: host, metrics: metrics, tracer: tracer, handled: handled)
        }
        var running: [(ScriptedConsumer, Task<Void, any Error>)] = []
        for entry in hosts {
            let (consumer, task, partition) = try SupervisorLoopTests.startAssigned(entry.host)
            consumer.append(partition, count: entry.count)
            running.append((consumer, task))
        }
        for entry in hosts {
            try await waitUntil("each host handled its messages") { entry.handled.distinct == entry.count }
        }
        for entry in hosts {
            #expect(
                entry.metrics.counterTotal(label: "sluice_messages_processed_total", dimensions: [("topic", "orders")])
                    == Int64(entry.count),
                "host with \(entry.count) messages")
            #expect(entry.tracer.finishedSpans.filter { $0.operationName == "process orders" }.count == entry.count)
        }
        for (entry, (consumer, task)) in zip(hosts, running) {
            entry.host.shutdown()
            consumer.finish()
            try await task.value
        }
    }
}
