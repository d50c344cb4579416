import ArgumentParser
import Foundation
import Logging
import SluiceKafka
import Synchronization

struct ConsumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consume",
        abstract: "Consume topics in a group with the plain Kafka layer, printing the rate each second.",
        discussion: """
            Reads every assigned partition, stores and commits offsets, and checks that the per-key sequence \
            numbers written by `sluice produce` arrive in order. Runs until SIGINT/SIGTERM or --count messages.
            """
    )

    @Option(name: .long, help: "bootstrap.servers, e.g. the line `sluice dev-broker` prints.")
    var bootstrap: String

    @Option(name: .long, help: "Consumer group.")
    var group: String = "sluice-consume"

    @Option(name: .long, help: "A topic to consume. Repeat for more topics.")
    var topic: [String]

    @Option(name: .long, help: "Stop after this many messages (default: run until a signal).")
    var count: Int?

    @Flag(name: .long, help: "Do not decode payloads to check per-key order (measures the Kafka layer alone).")
    var noOrderCheck = false

    @OptionGroup var connection: KafkaConnectionOptions

    func run() async throws {
        var logger = Logger(label: "sluice.consume")
        // librdkafka's errors arrive as events too and are printed below; keep the log for failures.
        logger.logLevel = .error
        let servers = bootstrap.hasPrefix("bootstrap=") ? String(bootstrap.dropFirst(10)) : bootstrap
        var configuration = KafkaConsumerConfiguration(bootstrapServers: servers, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        configuration.properties.merge(try connection.librdkafkaProperties()) { _, given in given }
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        try await consumer.subscribe(topics: topic)
        let stats = ConsumeStats(checkOrder: !noOrderCheck)
        let target = count

        let reader = Task {
            await withTaskGroup(of: Void.self) { partitions in
                for await event in consumer.events {
                    switch event {
                    case .assigned(let assigned):
                        stats.note("assigned \(assigned.sorted().map(\.description).joined(separator: " "))")
                        for topicPartition in assigned {
                            guard let messages = consumer.messages(for: topicPartition) else { continue }
                            partitions.addTask {
                                for await batch in messages {
                                    stats.check(batch)
                                    if let last = batch.last {
                                        try? consumer.storeOffsets([
                                            TopicPartitionOffset(topicPartition, offset: last.offset + 1)
                                        ])
                                    }
                                }
                            }
                        }
                    case .revoked(let revocation):
                        stats.note(
                            "revoked \(revocation.partitions.sorted().map(\.description).joined(separator: " "))")
                        revocation.done()
                    case .lost(let lost):
                        stats.note("lost \(lost.sorted().map(\.description).joined(separator: " "))")
                    case .error(let error):
                        stats.note("kafka: \(error.message)")
                    }
                }
            }
        }
        let reporter = Task {
            var previous = 0
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(1))
                let (total, violations) = stats.snapshot
                stats.note("consumed \(total) (\(total - previous) msg/s), per-key order violations \(violations)")
                previous = total
            }
        }
        let stop = Task {
            if let target {
                while stats.snapshot.total < target { try await Task.sleep(for: .milliseconds(20)) }
                return "count reached"
            }
            return await ShutdownSignal.wait()
        }
        let reason = try await stop.value
        reporter.cancel()
        await consumer.close()
        await reader.value
        let (total, violations) = stats.snapshot
        stats.note("stopped (\(reason)): consumed \(total), per-key order violations \(violations)")
        if let rate = stats.rate {
            stats.note("rate: \(Int(rate)) msg/s from the first message to the last")
        }
        if violations > 0 { throw ExitCode(1) }
    }
}

/// Counts messages and per-key order violations across partitions.
final class ConsumeStats: Sendable {
    private struct State {
        var first: ContinuousClock.Instant?
        var last: ContinuousClock.Instant?
        var total = 0
        var violations = 0
        /// Last sequence number seen per topic and key.
        var lastSequence: [String: Int] = [:]
    }

    private let state = Mutex(State())
    private let checkOrder: Bool

    init(checkOrder: Bool) { self.checkOrder = checkOrder }

    func check(_ batch: [ConsumedMessage]) {
        let topic = batch.first?.topic ?? ""
        let payloads = checkOrder ? batch.map { LoadPayload(decoding: $0.value) } : []
        let now = ContinuousClock.now
        state.withLock { state in
            if state.first == nil { state.first = now }
            state.last = now
            state.total += batch.count
            for case let payload? in payloads {
                let key = topic + "/" + payload.key
                if let last = state.lastSequence[key], payload.sequence <= last { state.violations += 1 }
                state.lastSequence[key] = payload.sequence
            }
        }
    }

    var snapshot: (total: Int, violations: Int) { state.withLock { ($0.total, $0.violations) } }

    /// Messages per second between the first and the last batch.
    var rate: Double? {
        state.withLock { state in
            guard let first = state.first, let last = state.last, last > first else { return nil }
            return Double(state.total) / (last - first).seconds
        }
    }

    func note(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
