import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@Suite("Pause state across assignments", .timeLimit(.minutes(2)))
struct PauseAcrossAssignmentsTests {
    /// librdkafka 2.0.2 keeps an application pause across unassign and re-assign: a partition paused when it
    /// was revoked comes back paused when the group hands it back to the same member. The consumer must know
    /// and resume it when nothing wants it paused, or the partition never fetches again.
    @Test("a partition paused when revoked and handed back to the same member fetches again")
    func pausedAtRevocationFetchesAfterHandBack() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let group = TestSupport.uniqueName("g")
        var configuration = TestSupport.consumerConfiguration(cluster, group: group)
        // Keep commits out of the embedded coordinator's join windows (it rejects them there).
        configuration.commitInterval = .seconds(60)
        let first = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await first.subscribe(topics: ["orders"])
        let received = ReceivedMessages()
        let firstDriver = Task { await drive(first, into: received) }
        let partitions = [TopicPartition("orders", 0), TopicPartition("orders", 1)]
        try await waitUntil("the first member owns both partitions") { first.assignment == Set(partitions) }
        // Paused for as long as the partitions are here: an operator, back-pressure, a flag.
        for partition in partitions { await first.setPauseReasons([.operator], for: partition) }

        // A second member joins and takes one partition away, then leaves: the first member gets it back.
        let second = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await second.subscribe(topics: ["orders"])
        let secondReceived = ReceivedMessages()
        let secondDriver = Task { await drive(second, into: secondReceived) }
        try await waitUntil("the second member gets a partition", timeout: .seconds(60)) {
            !second.assignment.isEmpty
        }
        let moved = try #require(second.assignment.first)
        await second.close()
        await secondDriver.value
        try await waitUntil("the partition comes back", timeout: .seconds(60)) {
            first.assignment.contains(moved)
        }
        #expect(first.pauseReasons(for: moved).isEmpty, "a new assignment starts with the initial reasons (none)")

        try await TestSupport.produce(cluster, topic: "orders", partitions: 2, count: 200)
        try await waitUntil("the handed-back partition fetches its 100 messages") {
            received.count(moved) == 100
        }
        let kept = partitions.first { $0 != moved }!
        #expect(received.count(kept) == 0, "the partition that stayed is still paused")
        await first.setPauseReasons([], for: kept)
        try await waitUntil("the other partition resumes") { received.count(kept) == 100 }
        received.expectEveryOffsetOnceInOrder()
        await first.close()
        await firstDriver.value
        cluster.shutdown()
    }
}
