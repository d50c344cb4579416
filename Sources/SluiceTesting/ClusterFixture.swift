import Logging
import SluiceKafka
import Synchronization

/// Conveniences over a test cluster (``EmbeddedKafkaCluster``, librdkafka's mock cluster on loopback in
/// process, or ``TansuCluster``) for tests that run a real host: produce, and read what a group committed.
/// Faults are injected with the mock cluster's own methods (`setBrokerDown`, `pushRequestErrors`,
/// `setRoundTripTime`).
extension TestKafkaCluster {
    /// Produces `values` to `topic` (keys `keys[i % keys.count]` when given, which choose the partition)
    /// and waits for every acknowledgement; returns how many went to each partition.
    @discardableResult
    public func produce(
        topic: String, values: [String], keys: [String]? = nil, partition: Int32? = nil,
        logger: Logger = Logger(label: "sluice.testing")
    ) async throws -> [Int32: Int] {
        try await produce(
            values.indices.map { index in
                ProducerRecord(
                    topic: topic, partition: partition, key: keys.map { Array($0[index % $0.count].utf8) },
                    value: Array(values[index].utf8))
            }, logger: logger)
    }

    /// Produces `records` in their order (an idempotent producer: offsets follow that order in each partition),
    /// as fast as librdkafka's queue takes them, and waits for every acknowledgement; throws the first
    /// failed delivery. Returns how many went to each partition.
    @discardableResult
    public func produce(_ records: [ProducerRecord], logger: Logger = Logger(label: "sluice.testing")) async throws
        -> [Int32: Int]
    {
        var configuration = KafkaProducerConfiguration(bootstrapServers: bootstrapServers)
        configuration.properties.merge(clientProperties) { _, client in client }
        let producer = try KafkaProducer(configuration: configuration, logger: logger)
        let outcome = Mutex<(counts: [Int32: Int], delivered: Int, failure: KafkaError?)>(([:], 0, nil))
        do {
            for record in records {
                while true {
                    do {
                        try producer.enqueue(record) { result in
                            outcome.withLock { outcome in
                                switch result {
                                case .success(let report):
                                    outcome.counts[report.topicPartition.partition, default: 0] += 1
                                    outcome.delivered += 1
                                case .failure(let error): outcome.failure = outcome.failure ?? error
                                }
                            }
                        }
                        break
                    } catch {
                        guard error.code == .queueFull else { throw error }
                        try await Task.sleep(for: .milliseconds(2))
                    }
                }
            }
            try await waitUntil("\(records.count) records acknowledged") {
                outcome.withLock { $0.delivered == records.count || $0.failure != nil }
            }
        } catch {
            await producer.close()
            throw error
        }
        await producer.close()
        let (counts, failure) = outcome.withLock { ($0.counts, $0.failure) }
        if let failure { throw failure }
        return counts
    }

    /// What `group` committed for `topic`'s partitions `0..<partitions` (a partition with no commit is absent).
    public func committedOffsets(
        group: String, topic: String, partitions: Int, logger: Logger = Logger(label: "sluice.testing")
    ) async throws -> [Int32: Int64] {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: bootstrapServers, groupID: group)
        configuration.properties.merge(clientProperties) { _, client in client }
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        let offsets: [TopicPartition: Int64]
        do {
            offsets = try await consumer.committedOffsets(
                for: (0..<partitions).map { TopicPartition(topic, Int32($0)) })
        } catch {
            await consumer.close()
            throw error
        }
        await consumer.close()
        return Dictionary(uniqueKeysWithValues: offsets.map { ($0.key.partition, $0.value) })
    }

    /// The end offsets (high watermarks) of `topic`'s partitions `0..<partitions`.
    public func endOffsets(topic: String, partitions: Int, logger: Logger = Logger(label: "sluice.testing"))
        async throws -> [Int32: Int64]
    {
        var configuration = KafkaConsumerConfiguration(
            bootstrapServers: bootstrapServers, groupID: "sluice-testing-watermarks")
        configuration.properties.merge(clientProperties) { _, client in client }
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        var offsets: [Int32: Int64] = [:]
        do {
            for partition in 0..<Int32(partitions) {
                offsets[partition] = try await consumer.queryWatermarks(for: TopicPartition(topic, partition)).high
            }
        } catch {
            await consumer.close()
            throw error
        }
        await consumer.close()
        return offsets
    }
}

/// A record of a dead-letter topic, with what Sluice's dead-letter sink wrote in its headers.
public struct DeadLetterRecord: Sendable {
    /// The record as read (key, value and every header).
    public let message: ConsumedMessage

    /// The record `message` of a dead-letter topic.
    public init(message: ConsumedMessage) { self.message = message }
    /// `sluice.error`: why the handler gave up on it.
    public var error: String? { header("sluice.error") }
    /// `sluice.source.topic`, `.partition` and `.offset`: where it came from.
    public var sourceTopic: String? { header("sluice.source.topic") }
    public var sourcePartition: Int32? { header("sluice.source.partition").flatMap { Int32($0) } }
    public var sourceOffset: Int64? { header("sluice.source.offset").flatMap { Int64($0) } }
    /// `sluice.attempts`: how many times the handler was called.
    public var attempts: Int? { header("sluice.attempts").flatMap { Int($0) } }
    /// The value as UTF-8 text.
    public var text: String { String(decoding: message.value, as: UTF8.self) }

    /// The last header named `key`, as UTF-8 text.
    public func header(_ key: String) -> String? {
        message.headers.last { $0.key == key }.map { String(decoding: $0.value ?? [], as: UTF8.self) }
    }
}

extension TestKafkaCluster {
    /// Every record of `topic` (partitions `0..<partitions`) up to its end as of the call, in partition and
    /// offset order, read by a consumer of its own (a fresh group, from the earliest offset). Not for a topic written
    /// in transactions: their commit markers take offsets no reader is given.
    public func records(
        topic: String, partitions: Int = 1, timeout: Duration = .seconds(60),
        logger: Logger = Logger(label: "sluice.testing")
    ) async throws -> [ConsumedMessage] {
        let all = (0..<partitions).map { TopicPartition(topic, Int32($0)) }
        let ends = try await queryEnds(all, logger: logger)
        let wanted = ends.values.reduce(0, +)
        guard wanted > 0 else { return [] }
        let before: @Sendable (ConsumedMessage) -> Bool = { $0.offset < ends[TopicPartition(topic, $0.partition)] ?? 0 }
        return try await records(topic: topic, partitions: partitions, timeout: timeout, logger: logger) { read in
            read.count(where: before) >= wanted
        }.filter(before)
    }

    private func queryEnds(_ partitions: [TopicPartition], logger: Logger) async throws -> [TopicPartition: Int64] {
        var configuration = KafkaConsumerConfiguration(
            bootstrapServers: bootstrapServers, groupID: "sluice-testing-reader-\(UInt64.random(in: 0...UInt64.max))")
        configuration.properties.merge(clientProperties) { _, client in client }
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        do {
            let ends = try await consumer.queryHighWatermarks(for: partitions)
            await consumer.close()
            return ends
        } catch {
            await consumer.close()
            throw error
        }
    }

    /// Records of `topic` (partitions `0..<partitions`), read by a consumer of its own (a fresh group, from the
    /// earliest offset) until what was read satisfies `enough`, in partition and offset order. For a topic whose end
    /// the broker misreports (tansu reports the high watermark one short after a batch), where ``records(topic:partitions:timeout:logger:)``
    /// would stop early.
    public func records(
        topic: String, partitions: Int = 1, timeout: Duration = .seconds(60),
        logger: Logger = Logger(label: "sluice.testing"), until enough: @escaping @Sendable ([ConsumedMessage]) -> Bool
    ) async throws -> [ConsumedMessage] {
        var configuration = KafkaConsumerConfiguration(
            bootstrapServers: bootstrapServers, groupID: "sluice-testing-reader-\(UInt64.random(in: 0...UInt64.max))")
        configuration.properties.merge(clientProperties) { _, client in client }
        configuration.autoOffsetReset = .earliest
        configuration.sessionTimeout = .seconds(6)
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        let collected = RecordCollector()
        try await consumer.subscribe(topics: [topic])
        let reading = Task {
            await withTaskGroup(of: Void.self) { group in
                for await event in consumer.events {
                    switch event {
                    case .assigned(let assigned):
                        for topicPartition in assigned where topicPartition.partition < partitions {
                            guard let messages = consumer.messages(for: topicPartition) else { continue }
                            group.addTask { for await batch in messages { collected.add(batch) } }
                        }
                    case .revoked(let revocation):
                        revocation.done()
                    case .lost, .error:
                        break
                    }
                }
            }
        }
        let found = await eventually(timeout: timeout) { enough(collected.all) }
        await consumer.close()
        await reading.value
        let all = collected.all.sorted { ($0.partition, $0.offset) < ($1.partition, $1.offset) }
        guard found else {
            throw KafkaError(
                code: .timeout,
                message: "topic '\(topic)': \(all.count) records read in \(timeout), not what was wanted")
        }
        return all
    }

    /// What a dead-letter topic holds: every record, with the headers Sluice's dead-letter sink writes.
    public func deadLetters(topic: String, partitions: Int = 1, timeout: Duration = .seconds(60)) async throws
        -> [DeadLetterRecord]
    {
        try await records(topic: topic, partitions: partitions, timeout: timeout).map(DeadLetterRecord.init(message:))
    }
}

/// Records collected from several partitions' readers.
private final class RecordCollector: Sendable {
    private let state = Mutex<[ConsumedMessage]>([])
    func add(_ batch: [ConsumedMessage]) { state.withLock { $0 += batch } }
    var count: Int64 { Int64(state.withLock { $0.count }) }
    var all: [ConsumedMessage] { state.withLock { $0 } }
}
