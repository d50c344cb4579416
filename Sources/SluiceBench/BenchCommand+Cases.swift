import Foundation
import Logging
import Sluice
import SluiceKafka

/// One throughput case: what it runs, and what its runs measured.
struct BenchCase {
    let name: String
    let body: () async throws -> (count: Int, seconds: Double, cpu: Double)
    var rates: [Double] = []
    /// CPU seconds per million messages, per run.
    var cpuPerMillion: [Double] = []
    var peak = 0

    /// The name's first word (a1, b, c, ...).
    var key: String { String(name.prefix { $0 != " " }) }
}

/// The throughput cases, each reading the whole preloaded topic once with a fresh group.
extension BenchCommand {
    /// The control topic of case p (its audit topic beside it), made by the bench's broker.
    static let productionControlTopic = "bench.control"

    /// `window` is told when each case's first message arrives and when its last has been handled (the span
    /// CPU time and, with `--instructions`, instructions are counted over).
    func throughputCases(_ cluster: String, healthy: Int, window: MeasurementWindow = .none, logger: Logger)
        -> [BenchCase]
    {
        var partitionOrdering = TopicConfiguration()
        partitionOrdering.ordering = .partition
        var keyOrdering = TopicConfiguration()
        keyOrdering.ordering = .key
        keyOrdering.processors = 8
        var batching = TopicConfiguration()
        batching.batch = .init(size: 500, timeout: .milliseconds(batchTimeoutMs))
        var batchingSlow = TopicConfiguration()
        batchingSlow.batch = .init(size: 500, timeout: .milliseconds(50))
        var crashing = TopicConfiguration()
        crashing.breaker = .backoff  // restarts forever, 1 s .. 5 min apart
        let timeout = caseTimeout
        let messages = messages
        /// The raw loop with `properties` over Sluice's consumer settings, in a fresh group.
        func raw(_ name: String, properties: [String: String] = [:]) -> BenchCase {
            var configuration = consumerConfiguration(cluster, group: "raw")
            configuration.properties = properties
            let settings = configuration
            return BenchCase(name: name) {
                var fresh = settings
                fresh.groupID = "raw-\(UUID())"
                let run = fresh
                let result = try await onThread {
                    try RawConsumeLoop.run(
                        configuration: run, topic: "bench", count: messages, timeout: timeout, window: window)
                }
                return (result.messages, result.elapsed.seconds, result.cpuSeconds)
            }
        }
        return [
            raw("a1 raw librdkafka loop, Sluice's settings"),
            raw(
                "a2 raw librdkafka loop, stock queue settings",
                properties: ["queued.min.messages": "100000", "queued.max.messages.kbytes": "65536"]),
            BenchCase(name: "b host, no-op, ordering partition") {
                try await runHost(
                    cluster, settings: partitionOrdering, handler: .message, window: window, logger: logger)
            },
            BenchCase(name: "b0 host, no-op, ordering partition, no crash journal") {
                try await runHost(
                    cluster, settings: partitionOrdering, handler: .message, crashJournal: false, window: window,
                    logger: logger)
            },
            BenchCase(name: "bm host, no-op, ordering partition, Prometheus metrics") {
                try await runHost(
                    cluster, settings: partitionOrdering, handler: .message, prometheus: true, window: window,
                    logger: logger)
            },
            BenchCase(name: "c host, no-op, ordering key x8") {
                try await runHost(cluster, settings: keyOrdering, handler: .message, window: window, logger: logger)
            },
            BenchCase(
                name:
                    "p host, production defaults: ordering key x8, per-partition Prometheus metrics, crash journal, control plane, handler timeout"
            ) {
                try await runHost(
                    cluster, settings: keyOrdering, handler: .message, prometheus: true,
                    controlTopic: Self.productionControlTopic, window: window, logger: logger)
            },
            BenchCase(name: "o host, ordering key x8, a record out per message, at least once") {
                try await runHost(cluster, settings: keyOrdering, handler: .output, window: window, logger: logger)
            },
            BenchCase(name: "x host, ordering key x8, a record out per message, exactly once") {
                var exactlyOnce = keyOrdering
                exactlyOnce.output = .exactlyOnce
                return try await runHost(
                    cluster, settings: exactlyOnce, handler: .output, window: window, logger: logger)
            },
            BenchCase(name: "d host, batch handler (500, timeout \(batchTimeoutMs) ms)") {
                try await runHost(cluster, settings: batching, handler: .batch, window: window, logger: logger)
            },
            BenchCase(name: "d50 host, batch handler (500, timeout 50 ms)") {
                try await runHost(cluster, settings: batchingSlow, handler: .batch, window: window, logger: logger)
            },
            BenchCase(name: "e host, partition 0 crash-looping (healthy shards)") {
                try await runHost(
                    cluster, settings: crashing, handler: .crashPartitionZero, expected: healthy, window: window,
                    logger: logger)
            },
        ]
    }

    /// How long a case may take to read the topic: minutes, or an hour under callgrind (tens of times slower).
    var caseTimeout: Duration { instructionCase == nil ? .seconds(180) : .seconds(3600) }

    /// The topics every run of the cases needs on the bench's broker.
    var caseTopics: [String] {
        [
            "bench:\(partitions)", "bench.out:\(partitions)", "flagbench:1", "slowbench:1",
            "\(Self.productionControlTopic):1",
            "\(ControlPlaneWriter.auditTopic(forControl: Self.productionControlTopic)):1",
        ]
    }
}
