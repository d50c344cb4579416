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

/// Cases f and g: how fast a flag flip takes effect, and a handler that holds its thread.
extension BenchCommand {
    /// Flag reaction through the flag file: (flag off -> partition paused, flag on -> first message handled,
    /// flag on seen by the host (its flag pause reason gone) -> first message handled).
    func flagReaction(_ cluster: String, logger: Logger) async throws -> ([Double], [Double], [Double]) {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("bench-flags-\(UUID()).yaml").path
        try "{}".write(toFile: file, atomically: true, encoding: .utf8)
        var configuration = hostConfiguration(cluster, group: "flags", topics: ["flagbench": TopicConfiguration()])
        configuration.flags.file = file
        configuration.flags.pollInterval = .seconds(1)
        let host = SluiceHost(configuration: configuration, logger: logger)
        let seen = SeenBox()
        host.register("flagbench", SeenHandler(seen: seen))
        let running = Task { try await host.run() }
        let producer = try KafkaProducer(configuration: .init(bootstrapServers: cluster), logger: logger)
        while host.shards.first?.state != .running { try await Task.sleep(for: .milliseconds(10)) }
        var off: [Double] = []
        var on: [Double] = []
        var onApplied: [Double] = []
        for _ in 0..<flagRuns {
            // Change the flag at a random point of the poll period, as an operator would.
            try await Task.sleep(for: .milliseconds(Int.random(in: 0..<1000)))
            try "flagbench: off\n".write(toFile: file, atomically: true, encoding: .utf8)
            let offAt = ContinuousClock.now
            while !(host.shards.first?.pauseReasons.contains(.flag) ?? false) {
                try await Task.sleep(for: .milliseconds(1))
            }
            off.append((ContinuousClock.now - offAt).seconds)
            while host.shards.first?.state != .off { try await Task.sleep(for: .milliseconds(5)) }
            _ = try await producer.send(ProducerRecord(topic: "flagbench", value: Array(repeating: 120, count: 100)))
            seen.reset()
            try await Task.sleep(for: .milliseconds(Int.random(in: 0..<1000)))
            try "{}\n".write(toFile: file, atomically: true, encoding: .utf8)
            let onAt = ContinuousClock.now
            var appliedAt: ContinuousClock.Instant?
            while !seen.value {
                if appliedAt == nil, !(host.shards.first?.pauseReasons.contains(.flag) ?? true) { appliedAt = .now }
                try await Task.sleep(for: .milliseconds(1))
            }
            let handledAt = ContinuousClock.now
            on.append((handledAt - onAt).seconds)
            onApplied.append((handledAt - (appliedAt ?? handledAt)).seconds)
        }
        await producer.close()
        host.shutdown()
        try await running.value
        return (off, on, onApplied)
    }

    /// A handler slower than the topic (it spins 200 µs a message) on the one partition of its host: the
    /// partition's buffer fills, flow control pauses it and resumes it once half is handled; whether the
    /// handler then waits for messages is what this shows. Returns (messages a second, handler busy share).
    func slowHandler(_ cluster: String, logger: Logger) async throws -> (rate: Double, busy: Double) {
        let count = 20_000
        let producer = try KafkaProducer(configuration: .init(bootstrapServers: cluster), logger: logger)
        await producer.prepare(topics: ["slowbench"])
        let tally = PartitionTally()
        for _ in 0..<count {
            let record = ProducerRecord(topic: "slowbench", partition: 0, value: Array(repeating: 120, count: 100))
            while try !tally.enqueue(record, on: producer) { try await Task.sleep(for: .milliseconds(1)) }
        }
        while tally.delivered < count { try await Task.sleep(for: .milliseconds(20)) }
        await producer.close()
        let configuration = hostConfiguration(cluster, group: "slow", topics: ["slowbench": TopicConfiguration()])
        let host = SluiceHost(configuration: configuration, logger: logger)
        let counter = RateCounter(target: count)
        host.register("slowbench", SpinningHandler(counter: counter, spin: .microseconds(200)))
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + .seconds(120)
        while counter.count < count, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        host.shutdown()
        try await running.value
        guard counter.count >= count else {
            throw ValidationError("g: \(counter.count) of \(count) messages handled in 120 s")
        }
        let rate = Double(counter.count) / counter.seconds
        return (rate, rate * 200e-6)
    }

    func printSlowHandler(_ result: (rate: Double, busy: Double)) {
        print(
            "g slow handler (200 µs a message, one partition, 20000 messages): \(Int(result.rate)) msg/s, "
                + "the handler busy \(Int(result.busy * 100)) % of the time (5000 msg/s at 100 %)")
    }

    func printFlagReaction(_ reaction: (off: [Double], on: [Double], onApplied: [Double])) {
        print("f flag reaction (file source, poll interval 1 s, \(flagRuns) changes):")
        print(
            "  flag off -> partition paused:        median \(ms(median(reaction.off.sorted()))) ms, max \(ms(reaction.off.max()!)) ms"
        )
        print(
            "  flag on  -> first message handled:   median \(ms(median(reaction.on.sorted()))) ms, max \(ms(reaction.on.max()!)) ms"
        )
        print(
            "  flag on applied -> first message:    median \(ms(median(reaction.onApplied.sorted()))) ms, max \(ms(reaction.onApplied.max()!)) ms"
                + " (the partition resumed, to its first message handled)")
    }
}
