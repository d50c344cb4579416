import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

@Suite("Rebalances under load", .timeLimit(.minutes(3)))
struct RebalanceDuplicatesTests {
    /// Produces about `rate` messages a second over `keys` keys until cancelled; returns how many.
    static func produceSteadily(_ cluster: any TestKafkaCluster, topic: String, rate: Int, stop: Locked<Bool>)
        async throws -> Int
    {
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: HostFixture.logger)
        let acknowledged = Locked(0)
        var sent = 0
        while !stop.value {
            for _ in 0..<(rate / 20) {
                let record = ProducerRecord(
                    topic: topic, key: Array("k\(sent % 97)".utf8), value: Array("\(sent)".utf8))
                try producer.enqueue(record) { result in
                    if case .success = result { acknowledged.withLock { $0 += 1 } }
                }
                sent += 1
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        try await waitUntil("every message acknowledged") { acknowledged.value == sent }
        await producer.close()
        return sent
    }

    @Test(
        "a second host joining and leaving gracefully under load: every message handled, nothing lost, duplicates bounded"
    )
    func joinAndLeaveWithoutDuplicates() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 8])
        let group = HostFixture.uniqueGroup()
        let configuration = HostFixture.configuration(cluster, group: group, topics: ["orders": TopicConfiguration()])
        let handledA = HandledMessages()
        let handledB = HandledMessages()
        let hostA = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        hostA.register("orders", ClosureHandler { message, _ in handledA.append(message) })
        let hostB = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        hostB.register("orders", ClosureHandler { message, _ in handledB.append(message) })
        let stop = Locked(false)
        let producing = Task { try await Self.produceSteadily(cluster, topic: "orders", rate: 2_000, stop: stop) }
        let runA = Task { try await hostA.run() }
        var runB: Task<Void, any Error>?
        // Whatever fails below, nothing keeps producing or consuming after the test.
        defer {
            stop.withLock { $0 = true }
            hostA.shutdown()
            hostB.shutdown()
        }
        try await waitUntil("A runs all eight partitions") { hostA.shards.filter { $0.state == .running }.count == 8 }
        try await Task.sleep(for: .seconds(2))
        runB = Task { try await hostB.run() }
        try await waitUntil("B takes half", timeout: .seconds(60)) {
            hostB.shards.filter { $0.state == .running }.count == 4 && hostA.shards.count == 4
        }
        try await Task.sleep(for: .seconds(3))
        hostB.shutdown()
        try await runB?.value
        try await waitUntil("A runs all eight again", timeout: .seconds(60)) {
            hostA.shards.filter { $0.state == .running }.count == 8
        }
        try await Task.sleep(for: .seconds(2))
        stop.withLock { $0 = true }
        let produced = try await producing.value
        do {
            try await waitUntil("every message handled", timeout: .seconds(90)) {
                Set((handledA.all.value + handledB.all.value).map { "\($0.partition)/\($0.offset)" }).count == produced
            }
        } catch {
            // What a later look needs: where each of A's shards stands.
            for shard in hostA.shards {
                print(
                    "shard \(shard.topicPartition): \(shard.state) paused \(shard.pauseReasons) stored \(shard.storedOffset ?? -1)",
                    "high \(shard.highWatermark ?? -1) position \(shard.position ?? -1) in flight \(shard.inFlight)")
            }
            throw error
        }
        let total = handledA.count + handledB.count
        print(
            "rebalance duplicates: produced \(produced), handled \(total), duplicates \(total - produced) (A \(handledA.count), B \(handledB.count))"
        )
        #expect(hostA.assignmentsLost == 0 && hostB.assignmentsLost == 0, "revoked, never lost")
        // 0 in most runs, also under load. Under heavy load one run in about ten had its revocation commit
        // refused (REBALANCE_IN_PROGRESS: the group started another round while the first host drained), and
        // the second host handled again what the first did since its last commit: 4,951 of 47,400 at worst.
        // That residual is open (see the issue note); this bounds it so it is seen if it grows.
        #expect(total - produced <= produced / 8, "duplicates \(total - produced) of \(produced)")
        hostA.shutdown()
        try await runA.value
    }
}
