import Logging
import SluiceKafka
import Synchronization
import Testing
import SluiceTesting

@Suite("Partitions whose committed offset could not be fetched", .timeLimit(.minutes(2)))
struct CommittedOffsetFetchTests {
    /// librdkafka (2.0.2, and 2.16 alike) starts an assigned partition's fetcher only after the group
    /// coordinator answered its committed offset. When that OffsetFetch fails (a request-level error, or one
    /// that may not be retried because the assignment changed meanwhile, as it does in a cooperative
    /// rebalance), the partition stays assigned and never fetches "until the application unassigns it and
    /// possibly re-assigns it" (rdkafka_assignment.c). Seen end to end: a partition handed back after a second
    /// host left, running and unpaused, position -1, stalled for good.
    @Test("an assigned partition whose committed-offset fetch failed is restarted and fetches everything")
    func failedOffsetFetchRestarts() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        try await TestSupport.produce(cluster, topic: "orders", partitions: 2, count: 200)
        // The coordinator refuses the first committed-offset fetch (not retried by librdkafka).
        cluster.pushRequestErrors(apiKey: .offsetFetch, errors: [KafkaErrorCode(name: "GROUP_AUTHORIZATION_FAILED")!])
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")), logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["orders"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("both partitions fetch their 100 messages", timeout: .seconds(60)) {
            received.count(TopicPartition("orders", 0)) == 100 && received.count(TopicPartition("orders", 1)) == 100
        }
        received.expectEveryOffsetOnceInOrder()
        await consumer.close()
        await driver.value
        cluster.shutdown()
    }
}
