import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

@Suite("Commit metadata: offsets done above the commit", .timeLimit(.minutes(2)))
struct CommitMetadataTests {
    @Test("encodes runs of distances from the commit and decodes them back")
    func roundTrip() throws {
        let done: Set<Int64> = [101, 102, 103, 107, 110, 111, 99]
        let text = try #require(CommitMetadata.encode(done: done, above: 100))
        #expect(text == "sluice/1 1-3,7,10-11", "offsets below the commit are left out")
        #expect(try CommitMetadata.decode(text, committed: 100).done == [101, 102, 103, 107, 110, 111])
        #expect(CommitMetadata.encode(done: [5, 6], above: 10) == nil)
    }

    @Test("past the length limit the highest runs are left out (handled again), never a broken string")
    func truncates() throws {
        let done = Set(stride(from: Int64(1), to: 10_000, by: 2))  // 4,999 runs of one
        let text = try #require(CommitMetadata.encode(done: done, above: 0))
        #expect(text.utf8.count <= CommitMetadata.maximumLength)
        let decoded = try CommitMetadata.decode(text, committed: 0).done
        #expect(!decoded.isEmpty && decoded.isSubset(of: done))
        #expect(decoded.min() == 1, "the lowest runs are kept")
    }

    @Test("metadata that is not Sluice's names no offsets; a malformed one is refused, naming the run")
    func foreignAndMalformed() {
        #expect((try? CommitMetadata.decode(nil, committed: 5))?.done == [])
        #expect((try? CommitMetadata.decode("", committed: 5))?.done == [])
        #expect((try? CommitMetadata.decode("written by another client", committed: 5))?.done == [])
        for bad in [
            "sluice/1 3-1", "sluice/1 x", "sluice/1 1,,2", "sluice/1 -4", "sluice/1 1-2-3", "sluice/1 1-99999999",
        ] {
            #expect(throws: SluiceError.self, "\(bad)") { try CommitMetadata.decode(bad, committed: 5) }
        }
        do {
            _ = try CommitMetadata.decode("sluice/1 2,x7", committed: 0)
        } catch {
            #expect(error.message == "commit metadata 'sluice/1 2,x7': bad run 'x7'")
        }
    }

    @Test(
        "metadata is bounded by what a host can have done: above the commit, below the high watermark, a capped count and length, runs in order"
    )
    func bounded() throws {
        // What once made a host skip every message above a commit of 100, and grow to 1.2 GB over twenty runs.
        for (bad, why) in [
            ("sluice/1 0-999999", "bad run '0-999999'"),  // the committed offset itself is never done
            ("sluice/1 1-999999", "names more than 100000 done offsets"),
            ("sluice/1 5,3", "runs out of order or overlapping at '3'"),
            ("sluice/1 1-5,5", "runs out of order or overlapping at '5'"),
            ("sluice/1 1-4611686018427387904", "bad run '1-4611686018427387904'"),
            (
                "sluice/1 "
                    + Array(repeating: "1", count: 2_100).enumerated().map { "\($0.offset * 2 + 1)" }.joined(
                        separator: ","), "longer than 4096 bytes"
            ),
        ] {
            do {
                let decoded = try CommitMetadata.decode(bad, committed: 100, maximumDone: 100_000)
                Issue.record("accepted \(bad.prefix(40)): \(decoded.done.count) offsets")
            } catch {
                #expect(error.message.hasSuffix(why), "\(error.message)")
            }
        }
        #expect(throws: SluiceError.self) { try CommitMetadata.decode("sluice/1 1", committed: -1) }
        // Offsets at or past the high watermark are no messages yet: left out, counted.
        let decoded = try CommitMetadata.decode(
            "sluice/1 1-3,7-20", committed: 100, highWatermark: 110, maximumDone: 100)
        #expect(decoded.done == [101, 102, 103, 107, 108, 109])
        #expect(decoded.pastHighWatermark == 11)
        #expect(try CommitMetadata.decode("sluice/1 1-3", committed: 100, highWatermark: 100).done.isEmpty)
    }

    @Test(
        "a forged commit (offset 100, metadata 'sluice/1 0-999999', from any client of the group) skips nothing: the host handles every message above the commit, before and after a restart"
    )
    func forgedCommitSkipsNothing() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let partition = TopicPartition("orders", 0)
        try await cluster.produce(
            topic: "orders", values: (0..<1_000).map { "m\($0)" }, partition: 0, logger: HostFixture.logger)
        // The attacker: a client that may commit for the group (the hosts' own credentials can).
        var attacker = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group)
        attacker.sessionTimeout = .seconds(6)
        let consumer = try KafkaConsumer(configuration: attacker, logger: HostFixture.logger)
        try await consumer.subscribe(topics: ["orders"])
        for await event in consumer.events {
            if case .assigned = event { break }
        }
        try consumer.storeOffsets([TopicPartitionOffset(partition, offset: 100, metadata: "sluice/1 0-999999")])
        try await consumer.commit()
        await consumer.close()
        let forged = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 1)
        #expect(forged == [0: 100])

        let handled = HandledMessages()
        let configuration = HostFixture.configuration(cluster, group: group, topics: ["orders": TopicConfiguration()])
        for round in 0..<2 {
            let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
            host.register("orders", ClosureHandler { message, _ in handled.append(message) })
            let running = Task { try await host.run() }
            try await HostFixture.waitUntil(
                "every message above the forged commit handled (round \(round))", showing: ["host": host]
            ) {
                handled.distinct == 900 + 100 * round
            }
            host.shutdown()
            try await running.value
            if round == 0 {
                try await cluster.produce(
                    topic: "orders", values: (0..<100).map { "n\($0)" }, partition: 0, logger: HostFixture.logger)
            }
        }
        #expect(Set(handled.all.value.map(\.offset)) == Set(100..<1_100))
        #expect(try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 1) == [0: 1_100])
    }

    /// The lane of a key with two processors (FNV-1a, as the pipeline computes it).
    static func lane(of key: String) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return Int(hash % 2)
    }

    @Test("a new owner skips what the last owner finished above its commit: one message stuck, the others done")
    func newOwnerSkipsDoneWork() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        // Offset 0 has a key of its own lane; every other message a key of the other lane.
        let others = (0..<100).map { "k\($0)" }.filter { Self.lane(of: $0) != Self.lane(of: "stuck") }
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for index in 0..<200 {
            let key = index == 0 ? "stuck" : others[index % others.count]
            _ = try await producer.send(
                ProducerRecord(topic: "orders", key: Array(key.utf8), value: Array("\(index)".utf8)))
        }
        await producer.close()
        let group = HostFixture.uniqueGroup()
        var orders = TopicConfiguration()
        orders.ordering = .key
        orders.processors = 2
        var configuration = HostFixture.configuration(cluster, group: group, topics: ["orders": orders])
        configuration.drainTimeout = .milliseconds(500)
        configuration.shutdownTimeout = .seconds(2)

        // The first owner: the call for offset 0 hangs, so the commit stays at 0 while the other lane finishes
        // everything above it.
        let hang = Hang()
        let first = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        let handledByFirst = HandledMessages()
        first.register(
            "orders",
            ClosureHandler { message, _ in
                if message.offset == 0 { await hang.wait() }
                handledByFirst.append(message)
            })
        let firstRun = Task { try await first.run() }
        defer { hang.release() }
        try await waitUntil("the others done") { handledByFirst.distinct == 199 }
        let reader = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group),
            logger: HostFixture.logger)
        try await waitUntil("a commit carries them") {
            let committed = try await reader.committedProgress(for: [TopicPartition("orders", 0)])[
                TopicPartition("orders", 0)]
            return committed.map {
                $0.offset == 0 && (try? CommitMetadata.decode($0.metadata, committed: $0.offset).done.count) == 199
            } ?? false
        }
        await reader.close()
        first.shutdown()
        try await firstRun.value
        hang.release()

        // The next owner reads on from offset 0 and hands out only what is not done: offset 0.
        let second = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        let handledBySecond = HandledMessages()
        second.register("orders", ClosureHandler { message, _ in handledBySecond.append(message) })
        let secondRun = Task { try await second.run() }
        try await waitUntil("offset 0 handled") { handledBySecond.distinct == 1 }
        try await waitUntil("committed to the end") {
            try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 1)[0] == 200
        }
        second.shutdown()
        try await secondRun.value
        #expect(
            handledBySecond.all.value.map(\.offset) == [0], "nothing the first owner finished is handled a second time")
    }
}
