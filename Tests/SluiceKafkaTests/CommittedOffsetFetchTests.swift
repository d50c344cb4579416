import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

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
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            logger: TestSupport.logger)
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

@Suite("Position across assignments", .timeLimit(.minutes(2)))
struct PositionAcrossAssignmentsTests {
    /// The host decides whether a partition fetched anything in its current assignment from its position
    /// (the remedy for a partition librdkafka left unstarted, `SupervisorLoop.checkStall`). librdkafka keeps a
    /// partition's object across unassign and re-assign; its application position must not survive with it,
    /// or a partition handed back whose committed-offset fetch failed would look as if it had fetched (it
    /// does not: the fetcher's stop resets it, rdkafka_partition.c, 2.0.2 and 2.16).
    @Test("a partition handed back reports no position until it delivers in its new assignment")
    func positionIsPerAssignment() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let group = TestSupport.uniqueName("g")
        var configuration = TestSupport.consumerConfiguration(cluster, group: group)
        configuration.commitInterval = .seconds(60)
        try await TestSupport.produce(cluster, topic: "orders", partitions: 2, count: 20)
        let first = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await first.subscribe(topics: ["orders"])
        let received = ReceivedMessages()
        let firstDriver = Task { await drive(first, into: received, storeOffsets: false) }
        let partitions = [TopicPartition("orders", 0), TopicPartition("orders", 1)]
        try await waitUntil("the first member fetched both partitions") {
            partitions.allSatisfy { received.count($0) == 10 }
        }
        #expect(partitions.allSatisfy { first.position(of: $0) == 10 })

        let second = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await second.subscribe(topics: ["orders"])
        let secondDriver = Task { await drive(second, into: ReceivedMessages(), storeOffsets: false) }
        try await waitUntil("the second member gets a partition", timeout: .seconds(60)) { !second.assignment.isEmpty }
        let moved = try #require(second.assignment.first)
        // The first member's committed-offset fetch for the partition it gets back fails: librdkafka leaves it
        // unstarted (CommittedOffsetFetchTests) and it fetches nothing in its new assignment.
        cluster.pushRequestErrors(apiKey: .offsetFetch, errors: [KafkaErrorCode(name: "GROUP_AUTHORIZATION_FAILED")!])
        await second.close()
        await secondDriver.value
        try await waitUntil("the partition comes back", timeout: .seconds(60)) { first.assignment.contains(moved) }
        let before = received.count(moved)
        let position = first.position(of: moved)
        #expect(
            position == nil || received.count(moved) > before,
            "a position of the earlier assignment: \(position.map(String.init) ?? "nil")")
        // What an owner that sees it stalled asks for: the consumer's view, logged (and nothing else done).
        first.reportStall(moved)
        first.reportStall(TopicPartition("not-assigned", 0))
        await first.close()
        await firstDriver.value
        cluster.shutdown()
    }
}
