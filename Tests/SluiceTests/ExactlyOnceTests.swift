import Foundation
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

/// `output: exactlyOnce`: a shard's output, dead letters and offsets go in one transaction per commit interval.
@Suite("Exactly-once output", .timeLimit(.minutes(3)))
struct ExactlyOnceTests {
    @Test("every input's output once, a retried call's records once, dead letters in the transaction")
    func outputAndOffsetsCommitTogether() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 3, "orders.out": 2, "orders.dlq": 1])
        let produced = try await HostFixture.produce(cluster, topic: "orders", count: 300, keys: 30)
        let group = HostFixture.uniqueGroup()
        var settings = TopicConfiguration()
        settings.output = .exactlyOnce
        settings.ordering = .key
        settings.processors = 4
        settings.onFailure = .init(
            retries: 1, backoff: .init(initial: .milliseconds(1), maximum: .milliseconds(1)), then: .deadLetter)
        settings.deadLetterTopic = "orders.dlq"
        let host = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": settings]),
            logger: HostFixture.logger)
        // Partition 0's offset 5 fails once after its send (the retry's record is the one written); partition 1's
        // offset 7 always fails after its send (dead-lettered, its records never written).
        let handler = OutputTests.Forwarding(failOnce: 5, failAlways: OutputTests.Position(partition: 1, offset: 7))
        host.register("orders", handler)
        let running = Task { try await host.run() }
        try await waitUntil("300 handled or dead-lettered") {
            handler.calls.withLock { $0.count } == 300 && host.shards.reduce(0) { $0 + $1.deadLettered } == 1
        }
        host.shutdown()
        try await running.value

        let output = try await cluster.records(topic: "orders.out", partitions: 2) { records in
            Set(records.map { OutputTests.inputPosition(of: $0) }).count >= 299
        }
        let positions = output.map { OutputTests.inputPosition(of: $0) }
        #expect(positions.count == 299, "one record per input, none for the dead-lettered one")
        #expect(Set(positions).count == 299 && !positions.contains(OutputTests.Position(partition: 1, offset: 7)))
        // Read until found: a transaction's commit marker takes an offset, so the end is past the records.
        let letters = try await cluster.records(topic: "orders.dlq") { $0.count >= 1 }.map(DeadLetterRecord.init)
        #expect(letters.map(\.sourceOffset) == [7] && letters.map(\.sourcePartition) == [1])
        let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 3)
        if TestClusters.isTansu {
            #expect(committed == produced.mapValues { Int64($0) }, "committed by the transactions")
        } else {
            #expect(committed.isEmpty, "librdkafka's mock stores no offset a transaction commits")
        }
    }
}
