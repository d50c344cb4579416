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

    /// ``waitUntil(_:timeout:poll:_:)`` whose failure also says what each host was doing: joined or not, its
    /// loop's ticks, and each shard's state and pause reasons.
    static func waitUntil(
        _ what: String, showing hosts: [String: SluiceHost], _ condition: () async throws -> Bool
    ) async throws {
        do {
            try await SluiceTesting.waitUntil(what, condition)
        } catch let notReached as NotReached {
            let states = hosts.sorted { $0.key < $1.key }.map { name, host in
                let (joined, ticks, running, ended) = host.state.withLock {
                    ($0.joined, $0.ticks, $0.running, $0.ended)
                }
                let shards = host.shards.map { "\($0.topicPartition) \($0.state) \($0.pauseReasons.map(\.name))" }
                return
                    "\(name): joined \(joined), running \(running), run ended \(ended), ticks \(ticks), shards \(shards)"
            }
            Issue.record("\(notReached); \(states.joined(separator: "; "))")
            throw notReached
        }
    }

    static func configuration(
        _ cluster: any TestKafkaCluster, group: String, topics: [String: TopicConfiguration]
    ) -> SluiceConfiguration {
        var kafka = SluiceConfiguration.Kafka(bootstrap: cluster.bootstrapServers, group: group)
        kafka.sessionTimeout = .seconds(6)
        kafka.commitInterval = .milliseconds(500)
        if let rdkafkaDebug { kafka.properties["debug"] = rdkafkaDebug }
        var configuration = SluiceConfiguration(kafka: kafka, topics: topics)
        configuration.stateDirectory =
            FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)").path
        configuration.shutdownTimeout = .seconds(10)
        return configuration
    }

    /// Produces `count` messages with keys `k0..k<keys-1>` and values `<key>:<per-key sequence>`; returns how many
    /// went to each partition.
    @discardableResult
    static func produce(_ cluster: any TestKafkaCluster, topic: String, count: Int, keys: Int) async throws -> [Int32:
        Int]
    {
        var sequences = [Int](repeating: 0, count: keys)
        let records = (0..<count).map { index in
            let key = index % keys
            defer { sequences[key] += 1 }
            return ProducerRecord(
                topic: topic, key: Array("k\(key)".utf8), value: Array("k\(key):\(sequences[key])".utf8))
        }
        return try await cluster.produce(records, logger: logger)
    }

    /// The group's committed offsets for a topic's partitions.
    static func committed(_ cluster: any TestKafkaCluster, group: String, topic: String, partitions: Int32) async throws
        -> [Int32: Int64]
    {
        try await cluster.committedOffsets(group: group, topic: topic, partitions: Int(partitions), logger: logger)
    }

    /// The end offsets of a topic's partitions.
    static func endOffsets(_ cluster: any TestKafkaCluster, topic: String, partitions: Int32) async throws -> [Int32:
        Int64]
    {
        try await cluster.endOffsets(topic: topic, partitions: Int(partitions), logger: logger)
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
