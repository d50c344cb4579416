import Foundation
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

/// SluiceTesting's harness reports what the host would do with each message, without a broker.
@Suite("SluiceTesting: a handler run in-process", .timeLimit(.minutes(1)))
struct HandlerHarnessTests {
    struct Failing: Error {}

    /// Fails the offsets in `failing` `times` times each, then succeeds.
    struct Flaky: MessageHandler {
        let failing: Set<Int64>
        let times: Int
        let seen = Locked<[Int64: Int]>([:])
        func handle(_ message: Message, context: ShardContext) async throws {
            let count = seen.withLock { seen -> Int in
                seen[message.offset, default: 0] += 1
                return seen[message.offset]!
            }
            if failing.contains(message.offset), count <= times { throw Failing() }
        }
    }

    @Test("retries then success, dead-letter, skip, and stop: each message's fate and the committed offset")
    func policies() async {
        let messages = TestMessages.values((0..<5).map { "m\($0)" })
        var retrying = TopicConfiguration()
        retrying.onFailure = .init(retries: 2, backoff: .init(initial: .seconds(5), maximum: .seconds(5)), then: .stop)
        let retried = await HandlerHarness(configuration: retrying, handler: Flaky(failing: [1], times: 2)).run(
            messages)
        #expect(
            retried[1] == .handled(attempts: 3), "two failures, then success (backoff skipped: this test takes no 10 s)"
        )
        #expect(retried.committedOffset == 5 && retried.crash == nil)

        var deadLetter = TopicConfiguration()
        deadLetter.onFailure = .init(retries: 1, then: .deadLetter)
        deadLetter.deadLetterTopic = "test.dlq"
        let dead = await HandlerHarness(configuration: deadLetter, handler: Flaky(failing: [2], times: 99)).run(
            messages)
        #expect(dead[2] == .deadLettered(attempts: 2))
        #expect(dead.deadLetters.map(\.message.offset) == [2] && dead.committedOffset == 5)

        var skip = TopicConfiguration()
        skip.onFailure = .init(retries: 0, then: .skip)
        let skipped = await HandlerHarness(configuration: skip, handler: Flaky(failing: [3], times: 99)).run(messages)
        #expect(
            skipped[3] == .skipped(attempts: 1) && skipped[4] == .handled(attempts: 1) && skipped.committedOffset == 5)

        let stopped = await HandlerHarness(handler: Flaky(failing: [2], times: 99)).run(messages)
        #expect(stopped[1] == .handled(attempts: 1))
        #expect(stopped[2] == .notCommitted && stopped[3] == .notCommitted, "the shard stops at the failing message")
        #expect(stopped.committedOffset == 2)
        #expect(stopped.crash?.offset == 2)
    }

    @Test("a batch handler gets batches of the configured size; a failed batch fails all its messages")
    func batches() async {
        struct Sizes: BatchHandler {
            let sizes = Locked<[Int]>([])
            func handle(_ batch: [Message], context: ShardContext) async throws {
                sizes.withLock { $0.append(batch.count) }
                if batch.contains(where: { $0.offset == 7 }) { throw Failing() }
            }
        }
        var configuration = TopicConfiguration()
        configuration.batch = .init(size: 4, timeout: .milliseconds(5))
        configuration.onFailure = .init(retries: 0, then: .skip)
        let sink = Sizes()
        let run = await HandlerHarness(configuration: configuration, batchHandler: sink).run(
            TestMessages.values((0..<10).map { "\($0)" }))
        #expect(sink.sizes.value == [4, 4, 2])
        #expect((4..<8).allSatisfy { run[$0] == .skipped(attempts: 1) } && run[8] == .handled(attempts: 1))
        #expect(run.committedOffset == 10)
    }
}

@Suite("SluiceTesting: the embedded cluster fixture", .timeLimit(.minutes(1)))
struct ClusterFixtureTests {
    @Test("produce to a topic, run a host on it, and read what its group committed")
    func hostOnTheFixture() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let counts = try await cluster.produce(
            topic: "orders", values: (0..<40).map { "order \($0)" }, keys: ["a", "b", "c", "d"])
        #expect(counts.values.reduce(0, +) == 40)
        let group = HostFixture.uniqueGroup()
        let host = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": TopicConfiguration()]),
            logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let running = Task { try await host.run() }
        try await waitUntil("all committed") {
            let committed = try await cluster.committedOffsets(group: group, topic: "orders", partitions: 2)
            return committed.values.reduce(0, +) == 40
        }
        host.shutdown()
        try await running.value
        cluster.shutdown()
    }
}
