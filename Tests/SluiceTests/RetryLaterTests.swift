import Foundation
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

/// `onFailure: { then: retryLater, delays: [...] }`: a failed message waits in retry topics without holding its
/// partition, and is handled again once its delay passed (on the host's clock, which these tests drive).
@Suite("Delayed retries in retry topics", .timeLimit(.minutes(3)))
struct RetryLaterTests {
    /// Fails messages whose value starts with `fragile` while the clock is less than `healthyAfter` past
    /// `start`, and `poison` ones always; records every call.
    final class DownstreamHandler: MessageHandler {
        let clock: ManualHostClock
        let start: ContinuousClock.Instant
        let healthyAfter: Duration
        let calls = Locked<[Message]>([])
        let handled = Locked<[Message]>([])

        init(clock: ManualHostClock, healthyAfter: Duration) {
            self.clock = clock
            self.start = clock.now
            self.healthyAfter = healthyAfter
        }

        func handle(_ message: Message, context: ShardContext) async throws {
            calls.withLock { $0.append(message) }
            let text = String(decoding: message.value, as: UTF8.self)
            if text.hasPrefix("poison") || (text.hasPrefix("fragile") && clock.now - start < healthyAfter) {
                throw TestFailure(description: "downstream unavailable for \(text)")
            }
            handled.withLock { $0.append(message) }
        }

        /// The first position of a message: its own, or the one its retry headers name.
        static func origin(_ message: Message) -> String {
            let header = { (key: String) in
                message.headers.last { $0.key == key }.map { String(decoding: $0.value ?? [], as: UTF8.self) }
            }
            if let partition = header("sluice.retry.origin.partition"),
                let offset = header("sluice.retry.origin.offset")
            {
                return "\(partition)/\(offset)"
            }
            return "\(message.partition)/\(message.offset)"
        }
    }

    static func settings(delays: [Duration], createTopics: Bool = true) -> TopicConfiguration {
        var settings = TopicConfiguration()
        settings.onFailure = .init(retries: 0, then: .retryLater, delays: delays, createTopics: createTopics)
        settings.deadLetterTopic = "orders.dlq"
        return settings
    }

    @Test(
        "a message failing for the first 20 s of its life waits in orders.retry.30s: the partition's other messages go on at once, it is handled after its delay, nothing lost"
    )
    func failingForTwentySeconds() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 2, "orders.retry.30s": 2, "orders.dlq": 1])
        let values = (0..<200).map { $0 % 50 == 7 ? "fragile-\($0)" : "ok-\($0)" }
        let produced = try await cluster.produce(
            topic: "orders", values: values, keys: (0..<20).map { "k\($0)" }, logger: HostFixture.logger)
        let group = HostFixture.uniqueGroup()
        let clock = ManualHostClock()
        let handler = DownstreamHandler(clock: clock, healthyAfter: .seconds(20))
        let host = SluiceHost(
            configuration: HostFixture.configuration(
                cluster, group: group, topics: ["orders": Self.settings(delays: [.seconds(30)])]),
            logger: HostFixture.logger, clock: clock)
        host.register("orders", handler)
        let running = Task { try await host.run() }
        defer { host.shutdown() }

        // The clock stands still: every other message is handled, the four fragile ones parked, and the retry
        // partitions that hold them wait, paused.
        try await HostFixture.waitUntil("the others handled, the fragile ones parked", showing: ["host": host]) {
            handler.handled.value.count == 196 && host.shards.reduce(0) { $0 + $1.retriedLater } == 4
        }
        try await HostFixture.waitUntil("the retry partitions wait for the delay", showing: ["host": host]) {
            let waiting = host.shards.filter { $0.topicPartition.topic == "orders.retry.30s" && $0.inFlight == 0 }
                .filter { $0.pauseReasons.contains(.retryDelay) }
            return !waiting.isEmpty
                && handler.calls.value.filter { $0.topic == "orders.retry.30s" }.isEmpty
        }
        try await waitUntil("orders committed to its end, the fragile ones included") {
            try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 2)
                == produced.mapValues { Int64($0) }
        }
        #expect(handler.calls.value.count == 200, "each message called once so far")

        // 30 s later on the host's clock (the downstream is back after 20 s): handled from the retry topic.
        clock.advance(by: .seconds(30))
        try await HostFixture.waitUntil("the fragile ones handled from the retry topic", showing: ["host": host]) {
            handler.handled.value.count == 200
        }
        let retried = handler.calls.value.filter { $0.topic == "orders.retry.30s" }
        #expect(retried.count == 4)
        for message in retried {
            let record = DeadLetterRecord(message: message)
            #expect(record.header("sluice.retry.attempt") == "1")
            #expect(record.header("sluice.retry.origin.topic") == "orders")
            #expect(record.header("sluice.retry.firstError")?.hasPrefix("downstream unavailable for fragile") == true)
            #expect(record.text.hasPrefix("fragile"))
        }
        #expect(
            Set(handler.handled.value.map(DownstreamHandler.origin)).count == 200,
            "every message of orders handled, from where it was or from the retry topic")
        // Its only records: committed past each partition's last.
        let ends = Dictionary(retried.map { ($0.partition, $0.offset + 1) }, uniquingKeysWith: max)
        try await waitUntil("the retry topic committed past its records") {
            try await HostFixture.committed(cluster, group: group, topic: "orders.retry.30s", partitions: 2) == ends
        }
        #expect(host.shards.reduce(0) { $0 + $1.deadLettered } == 0)
        host.shutdown()
        try await running.value
    }

    @Test(
        "a message failing in every retry topic goes to the dead-letter topic after the last delay, with its origin and first error"
    )
    func lastDelayThenDeadLetter() async throws {
        let cluster = try await TestClusters.start(
            topics: ["orders": 1, "orders.retry.1s": 1, "orders.retry.2s": 1, "orders.dlq": 1])
        try await cluster.produce(
            topic: "orders", values: ["ok-0", "poison-1", "ok-2"], keys: ["a", "b", "c"], partition: 0,
            logger: HostFixture.logger)
        let clock = ManualHostClock()
        let handler = DownstreamHandler(clock: clock, healthyAfter: .zero)
        let host = SluiceHost(
            configuration: HostFixture.configuration(
                cluster, group: HostFixture.uniqueGroup(),
                topics: ["orders": Self.settings(delays: [.seconds(1), .seconds(2)])]),
            logger: HostFixture.logger, clock: clock)
        host.register("orders", handler)
        let running = Task { try await host.run() }
        defer { host.shutdown() }
        try await HostFixture.waitUntil("parked in orders.retry.1s", showing: ["host": host]) {
            handler.handled.value.count == 2 && host.shards.reduce(0) { $0 + $1.retriedLater } == 1
        }
        clock.advance(by: .seconds(1))
        try await HostFixture.waitUntil("failed again, parked in orders.retry.2s", showing: ["host": host]) {
            host.shards.reduce(0) { $0 + $1.retriedLater } == 2
        }
        clock.advance(by: .seconds(2))
        let letters = try await cluster.records(topic: "orders.dlq") { $0.count >= 1 }.map(DeadLetterRecord.init)
        #expect(letters.count == 1)
        let letter = try #require(letters.first)
        #expect(letter.text == "poison-1")
        #expect(letter.sourceTopic == "orders.retry.2s", "the last failure's position")
        #expect(letter.header("sluice.retry.origin.topic") == "orders")
        #expect(letter.header("sluice.retry.origin.offset") == "1")
        #expect(letter.header("sluice.retry.firstError") == "downstream unavailable for poison-1")
        #expect(letter.message.headers.filter { $0.key == "sluice.error" }.count == 1, "one error: the last one")
        #expect(!letter.message.headers.contains { $0.key == "sluice.retry.due" })
        #expect(handler.calls.value.map(\.topic).filter { $0 != "orders" } == ["orders.retry.1s", "orders.retry.2s"])
        host.shutdown()
        try await running.value
    }

    @Test("a missing retry topic refuses the start when onFailure.createTopics is off, naming it; created when on")
    func missingRetryTopic() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 3, "orders.dlq": 1])
        let refused = SluiceHost(
            configuration: HostFixture.configuration(
                cluster, group: HostFixture.uniqueGroup(),
                topics: ["orders": Self.settings(delays: [.seconds(30)], createTopics: false)]),
            logger: HostFixture.logger)
        refused.register("orders", ClosureHandler { _, _ in })
        do {
            try await refused.run()
            Issue.record("started without its retry topic")
        } catch let error as SluiceError {
            #expect(
                error.message
                    == "topics.orders.onFailure: retry topic 'orders.retry.30s' does not exist in the cluster; create it (as many partitions as 'orders', a retention longer than its delay) or set topics.orders.onFailure.createTopics: on"
            )
        }
        guard TestClusters.isTansu else { return }  // The mock answers no CreateTopics.
        let host = SluiceHost(
            configuration: HostFixture.configuration(
                cluster, group: HostFixture.uniqueGroup(), topics: ["orders": Self.settings(delays: [.seconds(30)])]),
            logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let running = Task { try await host.run() }
        try await waitUntil("the retry topic's three partitions run") {
            host.shards.filter { $0.topicPartition.topic == "orders.retry.30s" && $0.state == .running }.count == 3
        }
        host.shutdown()
        try await running.value
    }

    @Test("what comes after a failure: in-place retries, then each retry topic in turn, then the dead-letter topic")
    func steps() {
        let policy = TopicConfiguration.FailurePolicy(
            retries: 1, backoff: .init(initial: .seconds(1), maximum: .seconds(1)), then: .retryLater,
            delays: [.seconds(30), .seconds(300)])
        #expect(policy.step(afterFailedAttempt: 1) == .retry(after: .seconds(1)))
        #expect(policy.step(afterFailedAttempt: 2) == .retryLater(stage: 0))
        let first = TopicConfiguration.RetryStage(topic: "orders", index: 0, delay: .seconds(30))
        let last = TopicConfiguration.RetryStage(topic: "orders", index: 1, delay: .seconds(300))
        #expect(policy.step(afterFailedAttempt: 1, stage: first) == .retry(after: .seconds(1)))
        #expect(policy.step(afterFailedAttempt: 2, stage: first) == .retryLater(stage: 1))
        #expect(policy.step(afterFailedAttempt: 2, stage: last) == .deadLetter)
    }

    @Test(
        "a retry record's due time is untrusted: a bad or missing header waits from the record's timestamp or not at all, a far one at most the delay"
    )
    func dueTimes() {
        func message(due: String?, timestamp: Int64? = nil) -> Message {
            Message(
                topic: "orders.retry.30s", partition: 0, offset: 3, key: nil, value: [],
                headers: due.map { [KafkaHeader(key: "sluice.retry.due", value: Array($0.utf8))] } ?? [],
                timestampMilliseconds: timestamp)
        }
        let now: Int64 = 1_800_000_000_000
        let delay = Duration.seconds(30)
        #expect(RetryHeaders.wait(for: message(due: "\(now + 12_000)"), delay: delay, now: now) == (.seconds(12), nil))
        #expect(RetryHeaders.wait(for: message(due: "\(now - 5)"), delay: delay, now: now).wait == .zero)
        #expect(RetryHeaders.wait(for: message(due: "\(Int64.max)"), delay: delay, now: now).wait == delay)
        let bad = RetryHeaders.wait(for: message(due: "soon", timestamp: now - 10_000), delay: delay, now: now)
        #expect(bad.wait == .seconds(20))
        #expect(bad.problem == "sluice.retry.due 'soon' is not a time in milliseconds since the epoch")
        let overflowing = RetryHeaders.wait(for: message(due: nil, timestamp: Int64.max - 5), delay: delay, now: now)
        #expect(overflowing == (.zero, "no sluice.retry.due header"))
        #expect(RetryHeaders.wait(for: message(due: "-4"), delay: delay, now: now).wait == .zero)
    }
}
