import Foundation
import MetricsTestKit
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

/// A handler's `context.send`: its records are written before the message counts as done (at least once), a failed
/// write fails the message like a thrown error, and a topic that cannot be written is named.
@Suite("Output: records a handler sends", .timeLimit(.minutes(3)))
struct OutputTests {
    /// Sends one record per message to `orders.out`, naming the input's position in its headers; the message at
    /// `failOnce` throws after its send, once.
    struct Forwarding: MessageHandler {
        var failOnce: Int64? = nil
        /// Fails every call of this message, after its send.
        var failAlways: Position? = nil
        /// Calls per input position.
        let calls = Locked<[Position: Int]>([:])

        func handle(_ message: Message, context: ShardContext) async throws {
            let position = Position(partition: message.partition, offset: message.offset)
            let call = calls.withLock { calls -> Int in
                calls[position, default: 0] += 1
                return calls[position]!
            }
            try await context.send(
                topic: "orders.out", key: message.key.map { Array($0) }, value: Array(message.value),
                headers: OutputTests.position(of: message))
            if message.offset == failOnce, call == 1 { throw TestFailure(description: "after the send") }
            if position == failAlways { throw TestFailure(description: "always, after the send") }
        }
    }

    static func position(of message: Message) -> [KafkaHeader] {
        [
            KafkaHeader(key: "input.partition", value: Array(String(message.partition).utf8)),
            KafkaHeader(key: "input.offset", value: Array(String(message.offset).utf8)),
        ]
    }

    /// Fails the first write of each record whose value is in `failing`.
    final class FailingOnce: OutputSink {
        let failing: Set<String>
        let failed = Mutex<Set<String>>([])
        init(failing: Set<String>) { self.failing = failing }

        func send(_ records: [ProducerRecord]) async throws {
            for record in records {
                let value = String(decoding: record.value, as: UTF8.self)
                guard failing.contains(value), failed.withLock({ $0.insert(value).inserted }) else { continue }
                throw SluiceError(code: .output, message: "broker down for \(value)")
            }
        }
    }

    @Test("the harness records what a handler sends; a call that fails after its send writes again on its retry")
    func harnessRecordsOutput() async {
        var configuration = TopicConfiguration()
        configuration.onFailure = .init(retries: 1, then: .stop)
        let run = await HandlerHarness(configuration: configuration, handler: Forwarding(failOnce: 2)).run(
            TestMessages.values(["a", "b", "c", "d"]))
        #expect(run[2] == .handled(attempts: 2) && run.committedOffset == 4)
        #expect(run.output.map { String(decoding: $0.value, as: UTF8.self) } == ["a", "b", "c", "c", "d"])
        #expect(run.output.allSatisfy { $0.topic == "orders.out" })
    }

    @Test("a failed write fails its message: retried by onFailure, then dead-lettered when it keeps failing")
    func failedWriteFailsTheMessage() async {
        var configuration = TopicConfiguration()
        configuration.onFailure = .init(retries: 1, then: .stop)
        let retried = await HandlerHarness(configuration: configuration, handler: Forwarding()).run(
            TestMessages.values(["a", "b", "c"]), output: FailingOnce(failing: ["b"]))
        #expect(retried[1] == .handled(attempts: 2), "the write failed once, the retry wrote it")
        #expect(retried.output.map { String(decoding: $0.value, as: UTF8.self) } == ["a", "b", "c"])

        configuration.onFailure = .init(retries: 0, then: .deadLetter)
        configuration.deadLetterTopic = "orders.dlq"
        let dead = await HandlerHarness(configuration: configuration, handler: Forwarding()).run(
            TestMessages.values(["a", "b", "c"]), output: FailingOnce(failing: ["b"]))
        #expect(dead[1] == .deadLettered(attempts: 1) && dead.committedOffset == 3)
        #expect(dead.deadLetters.first?.error.contains("broker down for b") == true)
    }

    @Test("every input message's output is in the output topic before its offset is committed")
    func everyInputHasItsOutput() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 3, "orders.out": 2])
        let produced = try await HostFixture.produce(cluster, topic: "orders", count: 300, keys: 30)
        let group = HostFixture.uniqueGroup()
        var settings = TopicConfiguration()
        settings.ordering = .key
        settings.processors = 4
        let host = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": settings]),
            logger: HostFixture.logger)
        let handler = Forwarding()
        host.register("orders", handler)
        let running = Task { try await host.run() }
        try await waitUntil("300 handled") { handler.calls.withLock { $0.count } == 300 }
        host.shutdown()
        try await running.value
        let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 3)
        #expect(committed == produced.mapValues { Int64($0) })

        let output = try await cluster.records(topic: "orders.out", partitions: 2) { records in
            Set(records.map { Self.inputPosition(of: $0) }).count >= 300
        }
        let positions = output.map { Self.inputPosition(of: $0) }
        #expect(Set(positions).count == 300 && positions.count == 300, "each input written once (no failure here)")
        for (partition, count) in produced {
            #expect(Set(positions.filter { $0.partition == partition }.map(\.offset)) == Set(0..<Int64(count)))
        }
    }

    @Test("a topic that does not exist fails the call with an error naming it; the message goes on by onFailure")
    func missingTopicIsNamed() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 1])
        try await HostFixture.produce(cluster, topic: "orders", count: 2, keys: 1)
        let group = HostFixture.uniqueGroup()
        var settings = TopicConfiguration()
        settings.onFailure = .init(retries: 0, then: .skip)
        let host = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": settings]),
            logger: HostFixture.logger)
        let errors = Locked<[String]>([])
        host.register(
            "orders",
            ClosureHandler { message, context in
                do {
                    try await context.send(topic: message.offset == 0 ? "no.such.topic" : "bad topic!", value: [1])
                } catch let error as SluiceError {
                    errors.withLock { $0.append("\(error.code): \(error.message)") }
                    throw error
                }
            })
        let running = Task { try await host.run() }
        try await waitUntil("both failed and skipped") { host.shards.first?.skipped == 2 }
        host.shutdown()
        try await running.value
        let seen = errors.withLock { $0 }
        #expect(seen.count == 2)
        #expect(
            seen.first?.hasPrefix("output: context.send: topic 'no.such.topic' does not exist in the cluster") == true)
        #expect(seen.last?.hasPrefix("output: context.send: topic 'bad topic!': not a Kafka topic name") == true)
        #expect(try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 1) == [0: 2])
    }

    @Test("output is counted per output topic; at most 256 topics are named, the rest count as other")
    func outputMetrics() {
        let metrics = TestMetrics()
        let output = OutputMetrics(factory: metrics)
        for index in 0..<300 { output.written(to: "t\(index)") }
        output.written(to: "t0")
        output.failed(to: "t0")
        #expect(metrics.counterTotal(label: "sluice_output_records_total", dimensions: [("topic", "t0")]) == 2)
        #expect(metrics.counterTotal(label: "sluice_output_records_total", dimensions: [("topic", "t255")]) == 1)
        #expect(metrics.counterTotal(label: "sluice_output_records_total", dimensions: [("topic", "other")]) == 44)
        #expect(metrics.counterTotal(label: "sluice_output_failures_total", dimensions: [("topic", "t0")]) == 1)
    }

    struct Position: Hashable {
        let partition: Int32
        let offset: Int64
    }

    static func inputPosition(of record: ConsumedMessage) -> Position {
        let partition = record.headers.last { $0.key == "input.partition" }?.value.flatMap {
            Int32(String(decoding: $0, as: UTF8.self))
        }
        let offset = record.headers.last { $0.key == "input.offset" }?.value.flatMap {
            Int64(String(decoding: $0, as: UTF8.self))
        }
        return Position(partition: partition ?? -1, offset: offset ?? -1)
    }
}
