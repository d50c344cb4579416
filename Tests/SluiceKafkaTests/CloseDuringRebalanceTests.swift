import SluiceKafka
import Testing

@Suite("Closing consumers during their first rebalance", .timeLimit(.minutes(3)))
struct CloseDuringRebalanceTests {
    /// librdkafka < 2.3.0 aborts the process when a cooperative-sticky consumer is closed during its first
    /// rebalance. Several consumers of one group, each closed 2-6 s after subscribing (the embedded
    /// coordinator completes the first join after 3 s), over and over for a minute: the process survives
    /// and every close returns (each is bounded by `closeTimeout`; the slowest is printed).
    @Test("no abort, and every close returns, repeatedly for a minute")
    func closeDuringFirstRebalance() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["churn": 6])
        let group = TestSupport.uniqueName("churn")
        let clock = ContinuousClock()
        let end = clock.now + .seconds(60)
        let closes = Locked<[Duration]>([])
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for _ in 0..<4 {
                tasks.addTask {
                    while clock.now < end {
                        let consumer = try KafkaConsumer(
                            configuration: TestSupport.consumerConfiguration(cluster, group: group),
                            logger: TestSupport.logger)
                        try await consumer.subscribe(topics: ["churn"])
                        let drain = Task { for await _ in consumer.events {} }
                        let lifetime = Int.random(in: 2_000...6_000)
                        try await Task.sleep(for: .milliseconds(lifetime))
                        let started = clock.now
                        await consumer.close()
                        closes.withLock { $0.append(clock.now - started) }
                        await drain.value
                    }
                }
            }
            try await tasks.waitForAll()
        }
        let all = closes.withLock { $0 }
        #expect(all.count >= 8, "every member went round at least twice: \(all.count) closes")
        print("close-during-first-rebalance: \(all.count) closes, slowest \(all.max() ?? .zero)")
    }
}
