import Logging
import SluiceKafka
import Synchronization
import SluiceTesting
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
    static func consumerConfiguration(_ cluster: EmbeddedKafkaCluster, group: String) -> KafkaConsumerConfiguration {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        configuration.commitInterval = .milliseconds(200)
        if let debug = ProcessInfoDebug.value { configuration.properties["debug"] = debug }
        return configuration
    }

    /// Produces `count` messages round-robin over `partitions` partitions, value `"<partition>:<n>"` with
    /// n counting up per partition. Returns the per-partition counts.
    @discardableResult
    static func produce(
        _ cluster: EmbeddedKafkaCluster,
        topic: String,
        partitions: Int32,
        count: Int
    ) async throws -> [Int32: Int] {
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: logger
        )
        var perPartition: [Int32: Int] = [:]
        let outcome = DeliveryTally()
        for index in 0..<count {
            let partition = Int32(index) % partitions
            let sequence = perPartition[partition, default: 0]
            perPartition[partition] = sequence + 1
            let record = ProducerRecord(
                topic: topic, partition: partition, key: Array("k\(index)".utf8),
                value: Array("\(partition):\(sequence)".utf8))
            // Enqueue in order (idempotent producer: offsets follow enqueue order per partition).
            while !(try enqueue(record, on: producer, outcome: outcome)) {
                try await Task.sleep(for: .milliseconds(2))
            }
        }
        try await eventually("\(count) deliveries") { outcome.state.withLock { $0.delivered == count || $0.failure != nil } }
        if let failure = outcome.state.withLock({ $0.failure }) { throw failure }
        await producer.close()
        return perPartition
    }

    /// Enqueues a record; returns false when librdkafka's queue is full.
    private static func enqueue(
        _ record: ProducerRecord,
        on producer: KafkaProducer,
        outcome: DeliveryTally
    ) throws -> Bool {
        do {
            try producer.enqueue(record) { result in
                outcome.state.withLock { outcome in
                    switch result {
                    case .success: outcome.delivered += 1
                    case .failure(let error): outcome.failure = error
                    }
                }
            }
            return true
        } catch {
            if error.code == .queueFull { return false }
            throw error
        }
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

    /// Waits until `condition` holds, polling; fails the test after `timeout`.
    static func eventually(
        _ what: String,
        timeout: Duration = .seconds(30),
        sourceLocation: SourceLocation = #_sourceLocation,
        _ condition: () async throws -> Bool
    ) async throws {
        guard await SluiceTesting.eventually(timeout: timeout, condition) else {
            Issue.record("timed out waiting for: \(what)", sourceLocation: sourceLocation)
            throw CancellationError()
        }
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
    onEvent: @escaping @Sendable (KafkaConsumerEvent) async -> Void = { _ in }
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
                            received.append(batch)
                            if storeOffsets, let last = batch.last {
                                try? consumer.storeOffsets([TopicPartitionOffset(topicPartition, offset: last.offset + 1)])
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

/// Counts delivery reports.
final class DeliveryTally: Sendable {
    let state = Mutex<(delivered: Int, failure: KafkaError?)>((0, nil))
}

/// A value behind a lock that closures can share.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout sending Value) -> sending R) -> R { mutex.withLock(body) }
}

import Foundation
enum ProcessInfoDebug { static let value = ProcessInfo.processInfo.environment["SLUICE_TEST_RDKAFKA_DEBUG"] }
