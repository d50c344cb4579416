import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

enum HostFixture {
    static let logger: Logger = {
        var logger = Logger(label: "sluice.host-test")
        logger.logLevel = rdkafkaDebug == nil ? .warning : .trace
        return logger
    }()

    /// `SLUICE_TEST_RDKAFKA_DEBUG=cgrp,fetch swift test --filter NAME` turns on librdkafka's debug contexts.
    static let rdkafkaDebug = ProcessInfo.processInfo.environment["SLUICE_TEST_RDKAFKA_DEBUG"]

    static func uniqueGroup() -> String { "host-\(UInt64.random(in: 0...UInt64.max))" }

    static func configuration(
        _ cluster: EmbeddedKafkaCluster, group: String, topics: [String: TopicConfiguration]
    ) -> SluiceConfiguration {
        var kafka = SluiceConfiguration.Kafka(bootstrap: cluster.bootstrapServers, group: group)
        kafka.sessionTimeout = .seconds(6)
        kafka.commitInterval = .milliseconds(500)
        if let rdkafkaDebug { kafka.properties["debug"] = rdkafkaDebug }
        var configuration = SluiceConfiguration(kafka: kafka, topics: topics)
        configuration.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)").path
        configuration.shutdownTimeout = .seconds(10)
        return configuration
    }

    /// Produces `count` messages with keys `k0..k<keys-1>` and values `<key>:<per-key sequence>`.
    static func produce(_ cluster: EmbeddedKafkaCluster, topic: String, count: Int, keys: Int) async throws {
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers), logger: logger)
        var sequences = [Int](repeating: 0, count: keys)
        let acknowledged = Locked(0)
        for index in 0..<count {
            let key = index % keys
            let record = ProducerRecord(topic: topic, key: Array("k\(key)".utf8), value: Array("k\(key):\(sequences[key])".utf8))
            sequences[key] += 1
            // Enqueued in order; the idempotent producer keeps that order per partition.
            while true {
                do {
                    try producer.enqueue(record) { result in
                        if case .success = result { acknowledged.withLock { $0 += 1 } }
                    }
                    break
                } catch {
                    guard error.code == .queueFull else { throw error }
                    try await Task.sleep(for: .milliseconds(2))
                }
            }
        }
        try await eventually("\(count) acknowledged") { acknowledged.value == count }
        await producer.close()
    }

    /// The group's committed offsets for a topic's partitions.
    static func committed(_ cluster: EmbeddedKafkaCluster, group: String, topic: String, partitions: Int32) async throws
        -> [Int32: Int64]
    {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        defer { Task { await consumer.close() } }
        let offsets = try await consumer.committedOffsets(for: (0..<partitions).map { TopicPartition(topic, $0) })
        return Dictionary(uniqueKeysWithValues: offsets.map { ($0.key.partition, $0.value) })
    }

    /// The end offsets of a topic's partitions.
    static func endOffsets(_ cluster: EmbeddedKafkaCluster, topic: String, partitions: Int32) async throws -> [Int32: Int64] {
        let consumer = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: "watermarks"),
            logger: logger)
        var result: [Int32: Int64] = [:]
        for partition in 0..<partitions {
            result[partition] = try await consumer.queryWatermarks(for: TopicPartition(topic, partition)).high
        }
        await consumer.close()
        return result
    }

    static func eventually(
        _ what: String, timeout: Duration = .seconds(40), sourceLocation: SourceLocation = #_sourceLocation,
        _ condition: () async throws -> Bool
    ) async throws {
        guard await SluiceTesting.eventually(timeout: timeout, condition) else {
            Issue.record("timed out waiting for: \(what)", sourceLocation: sourceLocation)
            throw CancellationError()
        }
    }
}

/// Records what handlers saw.
final class HandledMessages: Sendable {
    let all = Locked<[Message]>([])
    var count: Int { all.withLock { $0.count } }
    func append(_ message: Message) { all.withLock { $0.append(message) } }
    func append(contentsOf messages: [Message]) { all.withLock { $0.append(contentsOf: messages) } }
    /// Distinct (partition, offset) pairs.
    var distinct: Int { Set(all.value.map { "\($0.partition)/\($0.offset)" }).count }
}
