import ArgumentParser
import Foundation
import Logging
import SluiceKafka
import Synchronization

struct ProduceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "produce",
        abstract: "Produce load: N JSON messages over K keys, each with a per-key sequence number.",
        discussion: """
            Payload: {"key":"key-<k>","seq":<per-key sequence>,"n":<index>,"ts":<ms>,"pad":"..."} padded to \
            --size bytes. Message keys are key-0 ... key-<K-1>, so a key always lands in the same partition and \
            consumers can check per-key order. A progress line goes to stderr every second.
            """
    )

    @Option(name: .long, help: "bootstrap.servers, e.g. the line `sluice dev-broker` prints.")
    var bootstrap: String

    @Option(name: .long, help: "The topic to produce to.")
    var topic: String

    @Option(name: .long, help: "How many messages to produce.")
    var count: Int

    @Option(name: .long, help: "Messages per second (default: as fast as possible).")
    var rate: Int?

    @Option(name: .long, help: "Number of distinct keys.")
    var keys: Int = 100

    @Option(name: .long, help: "Payload size in bytes (at least the JSON fields need).")
    var size: Int = 100

    @OptionGroup var connection: KafkaConnectionOptions

    func validate() throws {
        let bootstrapValue = bootstrap.hasPrefix("bootstrap=") ? String(bootstrap.dropFirst(10)) : bootstrap
        guard !bootstrapValue.isEmpty else { throw ValidationError("--bootstrap cannot be empty") }
        guard count >= 0 else { throw ValidationError("--count must be 0 or more, got \(count)") }
        guard keys >= 1 else { throw ValidationError("--keys must be at least 1, got \(keys)") }
        if let rate, rate < 1 { throw ValidationError("--rate must be at least 1, got \(rate)") }
        guard size >= 1, size <= 1_000_000 else { throw ValidationError("--size must be 1...1000000, got \(size)") }
    }

    func run() async throws {
        var logger = Logger(label: "sluice.produce")
        logger.logLevel = .warning
        let servers = bootstrap.hasPrefix("bootstrap=") ? String(bootstrap.dropFirst(10)) : bootstrap
        var configuration = KafkaProducerConfiguration(bootstrapServers: servers)
        configuration.properties.merge(try connection.librdkafkaProperties()) { _, given in given }
        let producer = try KafkaProducer(configuration: configuration, logger: logger)
        await producer.prepare(topics: [topic])
        let tally = ProduceTally()
        let clock = ContinuousClock()
        let started = clock.now
        var sequences = [Int](repeating: 0, count: keys)
        var lastReport = started
        var reportedAcked = 0
        for index in 0..<count {
            if let rate {
                // Stay on schedule: message `index` is due at index / rate seconds.
                let due = started + .nanoseconds(Int64(index) * 1_000_000_000 / Int64(rate))
                if due > clock.now { try await Task.sleep(until: due, clock: clock) }
            }
            let key = index % keys
            let payload = LoadPayload(
                key: "key-\(key)", sequence: sequences[key], index: index,
                timestampMilliseconds: Int64(Date().timeIntervalSince1970 * 1000))
            sequences[key] += 1
            let record = ProducerRecord(topic: topic, key: Array("key-\(key)".utf8), value: payload.encoded(size: size))
            while try !tally.enqueue(record, on: producer) {
                try await Task.sleep(for: .milliseconds(1))
            }
            if let failure = tally.failure { throw failure }
            let now = clock.now
            if now - lastReport >= .seconds(1) {
                let acked = tally.acknowledged
                report("produced \(index + 1)/\(count), acknowledged \(acked), \(acked - reportedAcked) msg/s")
                reportedAcked = acked
                lastReport = now
            }
        }
        while tally.acknowledged < count, tally.failure == nil {
            try await Task.sleep(for: .milliseconds(20))
        }
        await producer.close()
        if let failure = tally.failure { throw failure }
        let seconds = (clock.now - started).seconds
        report(
            "done: \(count) messages to \(topic) in \(String(format: "%.2f", seconds)) s "
                + "(\(seconds > 0 ? Int(Double(count) / seconds) : count) msg/s)")
    }

    private func report(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}

/// Counts delivery reports from the producer's thread.
final class ProduceTally: Sendable {
    private let state = Mutex<(acknowledged: Int, failure: KafkaError?)>((0, nil))

    func record(_ result: Result<DeliveryReport, KafkaError>) {
        state.withLock { state in
            switch result {
            case .success: state.acknowledged += 1
            case .failure(let error): state.failure = state.failure ?? error
            }
        }
    }

    /// Enqueues a record; false when librdkafka's queue is full.
    func enqueue(_ record: ProducerRecord, on producer: KafkaProducer) throws -> Bool {
        do {
            try producer.enqueue(record) { self.record($0) }
            return true
        } catch {
            if error.code == .queueFull { return false }
            throw error
        }
    }

    var acknowledged: Int { state.withLock { $0.acknowledged } }
    var failure: KafkaError? { state.withLock { $0.failure } }
}
