import Foundation
import SluiceKafka
import SluiceTesting
import Testing

/// The producer's transactions, as librdkafka runs them against each broker here: what the mock shows (the call
/// sequence, injected errors and the recovery from them) and what tansu shows as well (offsets committed with the
/// transaction, a newer producer with the same id fencing the older one).
@Suite("KafkaProducer transactions", .timeLimit(.minutes(2)))
struct TransactionTests {
    static func producer(_ bootstrapServers: String, id: String, properties: [String: String] = [:]) throws
        -> KafkaProducer
    {
        var configuration = KafkaProducerConfiguration(bootstrapServers: bootstrapServers)
        configuration.transactionalID = id
        configuration.properties = properties
        return try KafkaProducer(configuration: configuration, logger: TestSupport.logger)
    }

    static func records(_ count: Int, from first: Int = 0) -> [ProducerRecord] {
        (first..<first + count).map { ProducerRecord(topic: "out", partition: 0, value: Array("v\($0)".utf8)) }
    }

    @Test("a committed transaction writes its records and commits the group's offsets; an aborted one commits none")
    func commitAndAbort() async throws {
        let cluster = try await TestClusters.start(topics: ["in": 1, "out": 1])
        let group = TestSupport.uniqueName("txn")
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: group), logger: TestSupport.logger)
        let producer = try Self.producer(
            cluster.bootstrapServers, id: TestSupport.uniqueName("txn"), properties: cluster.clientProperties)
        try await producer.initTransactions(timeout: .seconds(30))

        try producer.beginTransaction()
        let written = await producer.sendAll(Self.records(3))
        #expect(written.allSatisfy { if case .success = $0 { true } else { false } })
        try await producer.sendOffsetsToTransaction(
            [TopicPartitionOffset(TopicPartition("in", 0), offset: 3)], group: try consumer.groupMetadata(),
            timeout: .seconds(30))
        try await producer.commitTransaction(timeout: .seconds(30))

        try producer.beginTransaction()
        _ = await producer.sendAll(Self.records(2, from: 3))
        try await producer.sendOffsetsToTransaction(
            [TopicPartitionOffset(TopicPartition("in", 0), offset: 5)], group: try consumer.groupMetadata(),
            timeout: .seconds(30))
        try await producer.abortTransaction(timeout: .seconds(30))
        await producer.close()
        await consumer.close()

        let committed = try await cluster.committedOffsets(group: group, topic: "in", partitions: 1)
        if TestClusters.isTansu {
            #expect(committed == [0: 3], "the committed transaction's offsets, not the aborted one's")
        } else {
            // librdkafka's mock accepts TxnOffsetCommit and stores nothing.
            #expect(committed.isEmpty)
        }
    }

    @Test("an abortable error (a record the broker refused) fails the commit; abort, then the next transaction commits")
    func abortableErrorThenRecovery() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["in": 1, "out": 1])
        let id = TestSupport.uniqueName("txn")
        let producer = try Self.producer(cluster.bootstrapServers, id: id)
        try await producer.initTransactions(timeout: .seconds(30))
        try producer.beginTransaction()
        cluster.pushRequestErrors(apiKey: .produce, errors: [KafkaErrorCode(name: "MSG_SIZE_TOO_LARGE")!])
        let written = await producer.sendAll(Self.records(1))
        #expect(written.allSatisfy { if case .failure = $0 { true } else { false } })
        let failure = await #expect(throws: KafkaError.self) {
            try await producer.commitTransaction(timeout: .seconds(30))
        }
        #expect(failure?.requiresAbort == true && failure?.isFatal == false, "\(String(describing: failure))")
        try await producer.abortTransaction(timeout: .seconds(30))
        await producer.close()

        // The failed record took a sequence number the broker never saw: librdkafka (2.0.2 and 2.16 alike) fails
        // the next transaction of this producer with "skipped sequence numbers". A new producer with the id starts
        // with a new epoch: what a shard does after an abort.
        let next = try Self.producer(cluster.bootstrapServers, id: id)
        try await next.initTransactions(timeout: .seconds(30))
        try next.beginTransaction()
        let again = await next.sendAll(Self.records(1))
        #expect(again.allSatisfy { if case .success = $0 { true } else { false } }, "\(again)")
        try await next.commitTransaction(timeout: .seconds(30))
        await next.close()
    }

    @Test("a group the broker refuses for the offsets makes the transaction abortable; abort and go on")
    func offsetsRefusedThenRecovery() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["in": 1, "out": 1])
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("txn")),
            logger: TestSupport.logger)
        let producer = try Self.producer(cluster.bootstrapServers, id: TestSupport.uniqueName("txn"))
        try await producer.initTransactions(timeout: .seconds(30))
        try producer.beginTransaction()
        cluster.pushRequestErrors(
            apiKey: KafkaAPIKey(rawValue: 25), errors: [KafkaErrorCode(name: "GROUP_AUTHORIZATION_FAILED")!])
        let failure = await #expect(throws: KafkaError.self) {
            try await producer.sendOffsetsToTransaction(
                [TopicPartitionOffset(TopicPartition("in", 0), offset: 1)], group: try consumer.groupMetadata(),
                timeout: .seconds(30))
        }
        #expect(failure?.requiresAbort == true, "\(String(describing: failure))")
        try await producer.abortTransaction(timeout: .seconds(30))
        try producer.beginTransaction()
        try await producer.sendOffsetsToTransaction(
            [TopicPartitionOffset(TopicPartition("in", 0), offset: 1)], group: try consumer.groupMetadata(),
            timeout: .seconds(30))
        try await producer.commitTransaction(timeout: .seconds(30))
        await producer.close()
        await consumer.close()
    }

    @Test("a coordinator that moves during the commit: librdkafka finds the new one and the commit succeeds")
    func coordinatorLossIsRetried() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["in": 1, "out": 1])
        let producer = try Self.producer(cluster.bootstrapServers, id: TestSupport.uniqueName("txn"))
        try await producer.initTransactions(timeout: .seconds(30))
        try producer.beginTransaction()
        _ = await producer.sendAll(Self.records(2))
        cluster.pushRequestErrors(
            apiKey: KafkaAPIKey(rawValue: 26),
            errors: [KafkaErrorCode(name: "NOT_COORDINATOR")!, KafkaErrorCode(name: "COORDINATOR_NOT_AVAILABLE")!])
        try await producer.commitTransaction(timeout: .seconds(30))
        await producer.close()
    }

    @Test(
        "a second producer with the same transactional id fences the first: its commit fails as fatal",
        .enabled(if: TestClusters.isTansu, "librdkafka's mock fences no producer (tried: the older one commits)"))
    func newerProducerFencesTheOlder() async throws {
        let cluster = try await TestClusters.start(topics: ["in": 1, "out": 1])
        let id = TestSupport.uniqueName("txn")
        let older = try Self.producer(cluster.bootstrapServers, id: id, properties: cluster.clientProperties)
        try await older.initTransactions(timeout: .seconds(30))
        try older.beginTransaction()
        let newer = try Self.producer(cluster.bootstrapServers, id: id, properties: cluster.clientProperties)
        try await newer.initTransactions(timeout: .seconds(30))
        // Its record, written after it was fenced, never reaches the partition (tansu; an older producer whose
        // records were written before the newer one started has its commit time out there instead: not committed
        // either way).
        let refused = await older.sendAll(Self.records(1))
        #expect(refused.allSatisfy { if case .failure = $0 { true } else { false } }, "\(refused)")
        let failure = await #expect(throws: KafkaError.self) {
            try await older.commitTransaction(timeout: .seconds(10))
        }
        #expect(failure?.isFatal == true, "\(String(describing: failure))")
        try newer.beginTransaction()
        let written = await newer.sendAll(Self.records(1, from: 1))
        #expect(written.allSatisfy { if case .success = $0 { true } else { false } })
        try await newer.commitTransaction(timeout: .seconds(30))
        await older.close()
        await newer.close()
    }
}
