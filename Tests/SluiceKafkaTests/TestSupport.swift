import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

/// Loggers, clusters and helpers shared by the Kafka layer's tests.
enum TestSupport {
    static let logger: Logger = {
        var logger = Logger(label: "sluice.test")
        logger.logLevel = ProcessInfoDebug.value == nil ? .warning : .trace
        return logger
    }()

    /// A group name no other test uses.
    static func uniqueName(_ prefix: String) -> String {
        "\(prefix)-\(UInt64.random(in: 0...UInt64.max))"
    }

    /// A consumer configuration the embedded cluster answers quickly.
    static func consumerConfiguration(_ cluster: any TestKafkaCluster, group: String) -> KafkaConsumerConfiguration {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        configuration.commitInterval = .milliseconds(200)
        if let debug = ProcessInfoDebug.value { configuration.properties["debug"] = debug }
        return configuration
    }

    /// Produces `count` messages round-robin over `partitions` partitions, value `"<partition>:<n>"` with
    /// n counting up per partition. Returns the per-partition counts.
    @discardableResult
    static func produce(_ cluster: any TestKafkaCluster, topic: String, partitions: Int32, count: Int) async throws
        -> [Int32: Int]
    {
        var sequences: [Int32: Int] = [:]
        let records = (0..<count).map { index in
            let partition = Int32(index) % partitions
            defer { sequences[partition, default: 0] += 1 }
            return ProducerRecord(
                topic: topic, partition: partition, key: Array("k\(index)".utf8),
                value: Array("\(partition):\(sequences[partition, default: 0])".utf8))
        }
        return try await cluster.produce(records, logger: logger)
    }

    /// Whether `work` returns before `limit` passes. For "does not wait for X" checks where X takes far
    /// longer than `limit`; not a measure of how fast `work` is (that belongs in `sluice bench`).
    static func returnsFirst(_ work: @escaping @Sendable () async -> Void, before limit: Duration) async -> Bool {
        // The work runs in a task of its own: if it never returns, this still does (and the work is left).
        let returned = Locked(false)
        Task {
            await work()
            returned.withLock { $0 = true }
        }
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if returned.withLock({ $0 }) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return returned.withLock { $0 }
    }
}

/// Records what a consumer received, per partition, and stores offsets as it goes.
final class ReceivedMessages: Sendable {
    private let state = Mutex<[TopicPartition: [ConsumedMessage]]>([:])

    func append(_ batch: [ConsumedMessage]) {
        guard let first = batch.first else { return }
        state.withLock { $0[first.topicPartition, default: []].append(contentsOf: batch) }
    }

    var byPartition: [TopicPartition: [ConsumedMessage]] { state.withLock { $0 } }
    var total: Int { state.withLock { $0.values.reduce(0) { $0 + $1.count } } }
    func count(_ topicPartition: TopicPartition) -> Int { state.withLock { $0[topicPartition]?.count ?? 0 } }

    /// Records an issue for each partition whose offsets are not 0, 1, 2, ... with no gap or duplicate.
    func expectEveryOffsetOnceInOrder(sourceLocation: SourceLocation = #_sourceLocation) {
        for (topicPartition, messages) in byPartition {
            let contiguous = messages.map(\.offset) == Array(0..<Int64(messages.count))
            #expect(contiguous, "\(topicPartition): every offset once, in order", sourceLocation: sourceLocation)
        }
    }
}

/// Runs a consumer's event loop: reads every assigned partition into `received`, optionally storing
/// offsets, and releases revocations at once.
func drive(
    _ consumer: KafkaConsumer,
    into received: ReceivedMessages,
    storeOffsets: Bool = true,
    onEvent: @escaping @Sendable (KafkaConsumerEvent) async -> Void = { _ in },
    onBatch: @escaping @Sendable (TopicPartition, [ConsumedMessage]) async -> Void = { _, _ in }
) async {
    await withTaskGroup(of: Void.self) { group in
        for await event in consumer.events {
            await onEvent(event)
            switch event {
            case .assigned(let partitions):
                for topicPartition in partitions {
                    guard let messages = consumer.messages(for: topicPartition) else { continue }
                    group.addTask {
                        for await batch in messages {
                            await onBatch(topicPartition, batch)
                            received.append(batch)
                            if storeOffsets, let last = batch.last {
                                try? consumer.storeOffsets([
                                    TopicPartitionOffset(topicPartition, offset: last.offset + 1)
                                ])
                            }
                        }
                    }
                }
            case .revoked(let revocation):
                revocation.done()
            case .lost, .error:
                break
            }
        }
    }
}

/// A value behind a lock that closures can share.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout sending Value) -> sending R) -> R { mutex.withLock(body) }
}

enum ProcessInfoDebug { static let value = ProcessInfo.processInfo.environment["SLUICE_TEST_RDKAFKA_DEBUG"] }
