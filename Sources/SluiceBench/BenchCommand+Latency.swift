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

/// `--latency`: produce-to-handler latency at a steady rate, against the raw loop.
extension BenchCommand {
    /// Latency at a steady rate: a child producer (`sluice produce --rate`) stamps each message when it
    /// produces it (the record timestamp); the consumer notes, per message, the time from that stamp to when
    /// its handler starts (raw librdkafka: when the poll returns it). One fresh topic per case, the consumer
    /// joined before the producer starts. Timestamps are whole milliseconds: figures are within 1 ms.
    func runLatency(rate requested: Int, logger: Logger) async throws {
        let topics = [
            "latency-raw", "latency-partition", "latency-key", "latency-max", "latency-o", "latency-o.out", "latency-x",
            "latency-x.out",
        ]
        let broker = try ChildBroker(topics: topics.map { "\($0):8" })
        defer { broker.stop() }
        let cluster = broker.bootstrap
        var rate = requested
        if requested == 0 {
            let highest = try await highestRate(cluster)
            rate = max(1, highest / 2)
            print(
                "highest rate carried end to end (the producer flat out, a raw librdkafka loop consuming, first message to last): \(highest) msg/s; measuring at half: \(rate) msg/s"
            )
        }
        let count = rate * latencySeconds
        var rows: [(name: String, held: Int, values: [Double])] = []
        // Raw librdkafka: the poll loop on a thread of its own, the producer started once it has joined.
        let rawRun = try await startRawLoop(
            cluster, topic: "latency-raw", count: count, timeout: .seconds(Int64(latencySeconds) + 60), latencies: true)
        let rawHeld = try produceSteadily(cluster, topic: "latency-raw", rate: rate, count: count)
        rows.append(("raw librdkafka poll loop", rawHeld, try await rawRun.value.latencies))
        for (topic, name, ordering) in [
            ("latency-partition", "host, ordering partition", TopicConfiguration.Ordering.partition),
            ("latency-key", "host, ordering key x8", .key),
        ] {
            var settings = TopicConfiguration()
            settings.ordering = ordering
            settings.processors = ordering == .key ? 8 : 1
            let configuration = hostConfiguration(cluster, group: "latency", topics: [topic: settings])
            let host = SluiceHost(configuration: configuration, logger: logger)
            let recorder = LatencyRecorder(capacity: count)
            host.register(topic, LatencyHandler(recorder: recorder))
            let running = try await startFetching(host)
            let held = try produceSteadily(cluster, topic: topic, rate: rate, count: count)
            let done = ContinuousClock.now + .seconds(60)
            while recorder.count < count, ContinuousClock.now < done { try await Task.sleep(for: .milliseconds(20)) }
            host.shutdown()
            try await running.value
            rows.append((name, held, recorder.values))
        }
        // Output: the handler writes each message to TOPIC.out with the message's timestamp; a raw loop reading
        // TOPIC.out (read_committed, librdkafka's default) notes when each record became readable.
        for (topic, name, guarantee) in [
            ("latency-o", "output at least once, to readable", TopicConfiguration.OutputGuarantee.atLeastOnce),
            ("latency-x", "output exactly once, to readable", .exactlyOnce),
        ] {
            var settings = TopicConfiguration()
            settings.ordering = .key
            settings.processors = 8
            settings.output = guarantee
            let configuration = hostConfiguration(cluster, group: "latency", topics: [topic: settings])
            let reader = try await startRawLoop(
                cluster, topic: topic + ".out", count: count, timeout: .seconds(Int64(latencySeconds) + 60),
                latencies: true)
            let host = SluiceHost(configuration: configuration, logger: logger)
            host.register(topic, StampForwardingHandler(topic: topic + ".out"))
            let running = try await startFetching(host)
            let held = try produceSteadily(cluster, topic: topic, rate: rate, count: count)
            let latencies = try await reader.value.latencies
            host.shutdown()
            try await running.value
            rows.append((name, held, latencies))
        }
        print(
            "latency from produce to handler start (output cases: to the output record readable, read_committed, kafka.commitInterval 1 s), \(rate) msg/s for \(latencySeconds) s over 8 partitions (ms, timestamps in whole ms):"
        )
        print("case                             messages  producer held msg/s       p50       p99     p99.9       max")
        for (name, held, values) in rows {
            let sorted = values.sorted()
            func percentile(_ p: Double) -> String {
                guard !sorted.isEmpty else { return "-" }
                return String(format: "%.1f", sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))])
            }
            print(
                name.padding(toLength: 30, withPad: " ", startingAt: 0) + pad(sorted.count, width: 11)
                    + pad(held, width: 21)
                    + [
                        percentile(0.5), percentile(0.99), percentile(0.999),
                        sorted.last.map { String(format: "%.1f", $0) } ?? "-",
                    ]
                    .map { String(repeating: " ", count: max(0, 10 - $0.count)) + $0 }.joined())
        }
    }

    /// Runs `host` until its eight shards run and have had two seconds to start fetching: a shard runs once
    /// assigned, and librdkafka fetches its committed offset and starts fetching after that (about 100 ms here).
    /// The raw loop had seconds to get there; so does the host.
    func startFetching(_ host: SluiceHost) async throws -> Task<Void, any Error> {
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + .seconds(60)
        while host.shards.filter({ $0.state == .running }).count < 8, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        try await Task.sleep(for: .seconds(2))
        return running
    }

    /// The highest rate this machine carries from a producer to a consumer: `sluice produce` flat out (no
    /// `--rate`) in a child process while a raw librdkafka loop consumes, the loop's messages over its first
    /// to last. The producer, the broker and the consumer share the machine, as in the latency runs.
    func highestRate(_ cluster: String) async throws -> Int {
        let count = 1_000_000
        let consuming = try await startRawLoop(cluster, topic: "latency-max", count: count, timeout: .seconds(120))
        try produceSteadily(cluster, topic: "latency-max", rate: nil, count: count)
        let result = try await consuming.value
        guard result.messages == count, result.elapsed > .zero else {
            throw ValidationError(
                "the raw loop consumed \(result.messages) of \(count) messages while measuring the highest rate")
        }
        return Int(Double(result.messages) / result.elapsed.seconds)
    }

    /// A raw librdkafka loop on a thread of its own, consuming `count` messages of `topic`, once it has had
    /// the time to join its group (the raw loop has no assignment signal).
    func startRawLoop(
        _ cluster: String, topic: String, count: Int, timeout: Duration, latencies: Bool = false
    ) async throws -> Task<RawConsumeLoop.Result, any Error> {
        let configuration = consumerConfiguration(cluster, group: "\(topic)-\(UUID())")
        let run = Task {
            try await onThread {
                try RawConsumeLoop.run(
                    configuration: configuration, topic: topic, count: count, timeout: timeout, latencies: latencies)
            }
        }
        try await Task.sleep(for: .seconds(6))
        return run
    }

    /// Runs `sluice produce --rate` (without a rate: as fast as it can) in a child process until it produced
    /// `count` messages; returns the rate it held (messages over its whole run, start-up included).
    @discardableResult
    func produceSteadily(_ cluster: String, topic: String, rate: Int?, count: Int) throws -> Int {
        let started = ContinuousClock.now
        let process = try startProducer(cluster, topic: topic, rate: rate, count: count)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ValidationError("the steady producer failed (sluice produce exited \(process.terminationStatus))")
        }
        return Int(Double(count) / (ContinuousClock.now - started).seconds)
    }
}
