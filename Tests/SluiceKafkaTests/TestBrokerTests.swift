import SluiceKafka
import SluiceTesting
import Testing

@Suite("The broker the suite runs against")
struct TestBrokerTests {
    /// `make test`'s tansu pass (`SLUICE_TEST_BROKER=tansu`) must really talk to tansu, not fall back to the mock:
    /// the two answer CreateTopics differently (tansu implements it; the mock has none and auto-creates).
    @Test(
        "is the one the pass asked for (SLUICE_TEST_BROKER): CreateTopics creates a topic on tansu, the mock leaves it to auto-creation"
    )
    func brokerOfThePass() async throws {
        let cluster = try await TestClusters.start(topics: [:])
        let topic = KafkaTopicAdmin.NewTopic(
            name: "created-\(UInt32.random(in: 0...UInt32.max))", partitions: 3, replicationFactor: 1)
        let outcome = try await KafkaTopicAdmin.ensure(
            topic, bootstrapServers: cluster.bootstrapServers, timeout: .seconds(30))
        if TestClusters.isTansu {
            #expect(cluster.brokerName == "tansu")
            #expect(outcome == .created)
            let again = try await KafkaTopicAdmin.ensure(
                topic, bootstrapServers: cluster.bootstrapServers, timeout: .seconds(30))
            #expect(again == .existed(partitions: 3))
        } else {
            #expect(cluster.brokerName == "librdkafka mock")
            guard case .autoCreated = outcome else {
                Issue.record("the mock cluster has no CreateTopics, got \(outcome)")
                return
            }
        }
    }

    /// docs/development.md, tansu's quirks: tansu lists a partition's high watermark as its last record batch's base offset
    /// plus one, so tests on both brokers compare with what they produced. If this fails on tansu, tansu mended
    /// it: update the quirks.
    @Test(
        "listed high watermarks: the mock's are the end of the partition; tansu's are its last batch's base offset + 1, while every record is there"
    )
    func listedHighWatermarks() async throws {
        let cluster = try await TestClusters.start(topics: ["ends": 1])
        let produced = try await TestSupport.produce(cluster, topic: "ends", partitions: 1, count: 2_000)
        var configuration = TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("ends"))
        configuration.autoOffsetReset = .earliest
        let consumer = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        let listed = try await consumer.queryHighWatermarks(for: [TopicPartition("ends", 0)])[TopicPartition("ends", 0)]
        try await consumer.subscribe(topics: ["ends"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("every record read") { received.total >= 2_000 }
        await consumer.close()
        await driver.value
        #expect(produced[0] == 2_000 && received.total == 2_000, "every record is there on \(cluster.brokerName)")
        if TestClusters.isTansu {
            let high = try #require(listed)
            #expect(high < 2_000, "tansu lists \(high) for 2,000 records in batches")
            #expect(
                received.byPartition[TopicPartition("ends", 0)]?.contains { $0.offset == high - 1 } == true,
                "the listed high is a batch's base offset + 1")
        } else {
            #expect(listed == 2_000)
        }
    }
}
