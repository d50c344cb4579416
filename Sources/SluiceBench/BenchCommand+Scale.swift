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

/// `--scale`: thousands of partitions on one host (rate, memory, shutdown, admin API answers).
extension BenchCommand {
    func runScale(partitions total: Int, logger: Logger) async throws {
        let perTopic = total / 4
        let topics = (0..<4).map { "scale-\($0)" }
        let broker = try ChildBroker(topics: topics.map { "\($0):\(perTopic)" })
        defer { broker.stop() }
        let cluster = broker.bootstrap
        let producer = try KafkaProducer(configuration: .init(bootstrapServers: cluster), logger: logger)
        let tally = PartitionTally()
        for topic in topics {
            for partition in 0..<perTopic {
                for _ in 0..<10 {
                    let record = ProducerRecord(
                        topic: topic, partition: Int32(partition), value: Array(repeating: 120, count: 100))
                    while try !tally.enqueue(record, on: producer) { try await Task.sleep(for: .milliseconds(1)) }
                }
            }
        }
        let produced = perTopic * 4 * 10
        while tally.delivered < produced { try await Task.sleep(for: .milliseconds(20)) }
        await producer.close()
        let before = residentMegabytes()
        resetPeakResident()
        var configuration = hostConfiguration(
            cluster, group: "scale", topics: Dictionary(uniqueKeysWithValues: topics.map { ($0, TopicConfiguration()) })
        )
        // The admin API and Prometheus metrics as a service runs them: how long /metrics and /v1/shards take
        // with this many shards.
        let registry = Self.metrics.registry
        Self.metrics.setPrometheus(true)
        configuration.admin.enabled = true
        configuration.admin.listen = "127.0.0.1:0"
        configuration.admin.stateFile = nil
        configuration.perPartitionMetrics = perPartitionMetrics
        let host = SluiceHost(configuration: configuration, logger: logger)
        let admin = try AdminServer(host: host, registry: registry, logger: logger)
        let serving = Task { try await admin.run() }
        let counter = RateCounter(target: produced)
        for topic in topics { host.register(topic, CountingHandler(counter: counter)) }
        let started = ContinuousClock.now
        let running = Task { try await host.run() }
        var firstShard: ContinuousClock.Instant?
        while true {
            let shards = host.shards
            if firstShard == nil, !shards.isEmpty { firstShard = .now }
            if shards.count == perTopic * 4, shards.allSatisfy({ $0.state == .running }) { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        let allRunning = ContinuousClock.now
        while counter.count < produced { try await Task.sleep(for: .milliseconds(10)) }
        let handled = ContinuousClock.now
        let steadyMegabytes = residentMegabytes()
        // After a tick, so every gauge is there.
        try await Task.sleep(for: .seconds(1.5))
        var answers: [(path: String, milliseconds: [Double], bytes: Int)] = []
        if let port = admin.port {
            for path in ["/metrics", "/v1/shards"] {
                var times: [Double] = []
                var bytes = 0
                for _ in 0..<5 {
                    let asked = ContinuousClock.now
                    let (data, _) = try await URLSession.shared.data(
                        from: URL(string: "http://127.0.0.1:\(port)\(path)")!)
                    times.append((ContinuousClock.now - asked).seconds * 1000)
                    bytes = data.count
                }
                answers.append((path, times, bytes))
            }
        }
        host.shutdown()
        try await running.value
        let stopped = ContinuousClock.now
        serving.cancel()
        // The same messages through a plain librdkafka loop subscribed to the same topics: what librdkafka
        // itself reaches with this many partitions on this broker.
        let rawConfiguration = consumerConfiguration(cluster, group: "scale-raw-\(UUID())")
        let raw = try await onThread {
            try RawConsumeLoop.run(
                configuration: rawConfiguration, topics: topics, count: produced, timeout: .seconds(300))
        }
        print("scale: \(perTopic * 4) partitions over 4 topics on one host, \(produced) messages")
        print(
            "  subscribe -> all shards running:    \(ms((allRunning - started).seconds)) ms (first shard after \(ms(((firstShard ?? allRunning) - started).seconds)) ms; the embedded coordinator waits 3 s for the first join)"
        )
        print("  first shard -> all shards running:  \(ms((allRunning - (firstShard ?? allRunning)).seconds)) ms")
        print("  all running -> every message handled: \(ms((handled - allRunning).seconds)) ms")
        print("  shutdown (drain, commit, leave):    \(ms((stopped - handled).seconds)) ms")
        print(
            "  RSS: before the host \(before) MB, with \(perTopic * 4) shards running \(steadyMegabytes) MB, peak \(peakResidentMegabytes()) MB"
        )
        // Both from the first message to the last: the time before the first is librdkafka fetching 10,000
        // committed offsets, which the raw loop's figure leaves out too.
        let hostRate = Double(counter.count) / counter.seconds
        let rawRate = Double(raw.messages) / max(raw.elapsed.seconds, 0.001)
        print(
            "  rate, first message to last: host \(Int(hostRate)) msg/s (\(Int(Double(produced) / (handled - allRunning).seconds)) from all running); "
                + "raw librdkafka loop \(Int(rawRate)) msg/s (\(raw.messages) messages); host/raw \(String(format: "%.2f", hostRate / rawRate))"
        )
        for answer in answers {
            print(
                "  GET \(answer.path) (per-partition metrics \(perPartitionMetrics ? "on" : "off")): median \(Int(median(answer.milliseconds.sorted()))) ms, max \(Int(answer.milliseconds.max() ?? 0)) ms, \(answer.bytes / 1024) KiB"
            )
        }
    }
}
