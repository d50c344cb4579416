import Logging
import SluiceTesting
import Testing

@testable import SluiceKafka

@Suite("A consumer resumes where a process that died got to", .timeLimit(.minutes(2)))
struct ResumeFromProgressTests {
    /// A consumer of `group` resuming from `positions`, what its first assignment delivered first per partition,
    /// its resumed positions, and the group's commit after one commit of what it stored.
    func firstOffsets(
        _ cluster: EmbeddedKafkaCluster, group: String, delivering: [TopicPartition],
        positions: (String) -> [String: [TopicPartitionOffset]]
    ) async throws -> (
        first: [TopicPartition: Int64], resumed: [TopicPartition: TopicPartitionOffset],
        committed: [TopicPartition: Int64]
    ) {
        let clusterID = try await KafkaClusterID.query(
            bootstrapServers: cluster.bootstrapServers, timeout: .seconds(10))
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: group), logger: TestSupport.logger)
        consumer.resume(from: positions(clusterID))
        try await consumer.subscribe(topics: ["orders"])
        let received = ReceivedMessages()
        // Nothing stored as it goes: what is committed is what the resume stored.
        let driver = Task { await drive(consumer, into: received, storeOffsets: false) }
        let partitions = [TopicPartition("orders", 0), TopicPartition("orders", 1)]
        try await waitUntil("\(delivering) deliver") { delivering.allSatisfy { received.count($0) > 0 } }
        let first = received.byPartition.compactMapValues { $0.first?.offset }
        let resumed = Dictionary(
            uniqueKeysWithValues: partitions.compactMap { tp in consumer.resumedPosition(of: tp).map { (tp, $0) } })
        try await consumer.commit()
        let committed = try await consumer.committedOffsets(for: partitions)
        await consumer.close()
        await driver.value
        return (first, resumed, committed)
    }

    @Test(
        "the first assignment starts a partition at a dead process's position past the group's commit and stores it with its metadata; one behind the commit, another cluster's or past the high watermark is not taken as is"
    )
    func resumesPastTheCommit() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        try await TestSupport.produce(cluster, topic: "orders", partitions: 2, count: 40)  // 20 each
        let group = TestSupport.uniqueName("resume")
        let orders0 = TopicPartition("orders", 0)
        let orders1 = TopicPartition("orders", 1)
        // The group committed 4 on orders/0 and 15 on orders/1.
        let committer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: group), logger: TestSupport.logger)
        try await committer.subscribe(topics: ["orders"])
        let received = ReceivedMessages()
        let driver = Task { await drive(committer, into: received, storeOffsets: false) }
        try await waitUntil("both partitions deliver") { received.count(orders0) > 0 && received.count(orders1) > 0 }
        try committer.storeOffsets([
            TopicPartitionOffset(orders0, offset: 4), TopicPartitionOffset(orders1, offset: 15),
        ])
        try await committer.commit()
        await committer.close()
        await driver.value

        // A dead process of this cluster got to 9 on orders/0 (11 done too) and to 12 on orders/1 (behind the commit).
        let own = try await firstOffsets(cluster, group: group, delivering: [orders0, orders1]) { id in
            [
                id: [
                    TopicPartitionOffset(orders0, offset: 9, metadata: "sluice/1 2"),
                    TopicPartitionOffset(orders1, offset: 12),
                ]
            ]
        }
        #expect(own.first == [orders0: 9, orders1: 15], "orders/0 from the dead process's 9, orders/1 from the commit")
        #expect(own.resumed == [orders0: TopicPartitionOffset(orders0, offset: 9, metadata: "sluice/1 2")])
        #expect(own.committed == [orders0: 9, orders1: 15], "the resumed position is committed with the next commit")

        // Progress of another cluster is not used.
        let elsewhere = try await firstOffsets(cluster, group: group, delivering: [orders0, orders1]) { _ in
            ["another-cluster": [TopicPartitionOffset(orders0, offset: 18)]]
        }
        #expect(elsewhere.first[orders0] == 9 && elsewhere.resumed.isEmpty)

        // A position past the high watermark (20) starts there, without the metadata, which named offsets above it.
        let past = try await firstOffsets(cluster, group: group, delivering: [orders0]) { id in
            [id: [TopicPartitionOffset(orders1, offset: 500, metadata: "sluice/1 3")]]
        }
        #expect(past.resumed == [orders1: TopicPartitionOffset(orders1, offset: 20)])
        #expect(past.committed[orders1] == 20)
    }
}
