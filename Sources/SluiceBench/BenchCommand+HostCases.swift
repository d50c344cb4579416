import ArgumentParser
import Dispatch
import Foundation
import Logging
import Metrics
import Prometheus
import Sluice
import SluiceAdmin
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Cases b to x: a host on the preloaded topic with a no-op, batch, forwarding or crash-looping handler.
extension BenchCommand {
    enum HandlerKind { case message, batch, crashPartitionZero, output }

    func runHost(
        _ cluster: String, settings: TopicConfiguration, handler: HandlerKind, expected: Int? = nil,
        crashJournal: Bool = true, prometheus: Bool = false, controlTopic: String? = nil,
        window: MeasurementWindow = .none, logger: Logger
    ) async throws -> (count: Int, seconds: Double, cpu: Double) {
        // The host's metric handles are made as it starts: Prometheus as a service runs it, or none.
        Self.metrics.setPrometheus(prometheus)
        defer { Self.metrics.setPrometheus(false) }
        let target = expected ?? messages
        var configuration = hostConfiguration(cluster, group: "host", topics: ["bench": settings])
        configuration.crashJournal = crashJournal
        if let controlTopic {
            configuration.control.enabled = true
            configuration.control.topic = controlTopic
            configuration.control.createTopics = false
        }
        let host = SluiceHost(configuration: configuration, logger: logger)
        let counter = RateCounter(target: target, window: window)
        switch handler {
        case .message: host.register("bench", CountingHandler(counter: counter))
        case .batch: host.register("bench", batchHandler: CountingBatchHandler(counter: counter))
        case .crashPartitionZero: host.register("bench", CrashingHandler(counter: counter))
        case .output: host.register("bench", ForwardingHandler(counter: counter))
        }
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + caseTimeout
        while counter.count < target, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let cpu = counter.cpuSinceFirst
        host.shutdown()
        try await running.value
        return (counter.count, counter.seconds, cpu)
    }
}
