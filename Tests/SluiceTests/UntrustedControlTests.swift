import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

/// The control topic is input from outside the process (docs/architecture.md, "Trust boundaries"): anyone who can
/// produce to it can write any record. These tests write forged records the way an attacker would, with a raw
/// producer, to a running group, and assert what its users see: the hosts stay up, every message is handled,
/// and each forged record is refused, counted by reason and ignored.
@Suite("Forged control records against a running group", .timeLimit(.minutes(3)))
struct UntrustedControlTests {
    /// Records that once trapped every host at every start, or skipped work no host quarantined.
    static let forged: [(key: String, value: String, reason: ControlRecordRejected.Reason)] = [
        ("host/forged", #"{"v":1,"applied":1,"atMillis":-9223372036854775808,"shards":{"orders/0":"running"}}"#, .range),
        ("quarantine/orders/2", #"{"v":1,"state":"suspect","offset":0,"count":9223372036854775807,"crashes":1}"#, .range),
        ("quarantine/orders/2", #"{"v":1,"state":"skip","offset":0,"count":1000000000,"crashes":1}"#, .range),
        ("quarantine/orders/1", #"{"v":1,"state":"skip","offset":0,"count":5000,"crashes":1}"#, .release),
        (
            "quarantine/orders/3",
            #"{"v":1,"state":"skip","offset":0,"count":5000,"crashes":1,"recorded":{"offset":0,"count":1,"state":"quarantined","host":"h","atMillis":1}}"#,
            .release
        ),
        ("trip/orders/0", #"{"v":1,"state":"tripped","offset":-4,"reason":"forged"}"#, .range),
        ("flag/orders", #"{"v":1e300,"state":"off"}"#, .field),
        ("flag/orders", #"{"v":1,"state":"1e-300/s"}"#, .field),
    ]

    static func writeForged(_ cluster: any TestKafkaCluster, topic: String) async throws {
        let producer = try KafkaProducer(configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for record in forged {
            _ = try await producer.send(ProducerRecord(topic: topic, partition: 0, key: Array(record.key.utf8), value: Array(record.value.utf8)))
        }
        await producer.close()
    }

    @Test("forged records (overflowing fields, unbounded or unrecorded releases) are refused by every host, which stays up, handles every message and still refuses them after a restart")
    func forgedRecordsRefused() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 4])
        let group = HostFixture.uniqueGroup()
        let configuration = ControlPlaneTests.configuration(cluster, group: group)
        try await cluster.addTopic(configuration.controlTopic, partitions: 1)
        let handled = HandledMessages()
        func makeHost() -> SluiceHost {
            let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
            host.register("orders", ClosureHandler { message, _ in handled.append(message) })
            return host
        }
        _ = try await HostFixture.produce(cluster, topic: "orders", count: 400, keys: 40)
        let hostA = makeHost()
        let hostB = makeHost()
        let runA = Task { try await hostA.run() }
        let runB = Task { try await hostB.run() }
        try await waitUntil("the first 400 handled by the group", timeout: .seconds(90)) { handled.distinct == 400 }

        try await Self.writeForged(cluster, topic: configuration.controlTopic)
        _ = try await HostFixture.produce(cluster, topic: "orders", count: 400, keys: 40)
        let expected = Set(Self.forged.map(\.reason))
        for host in [hostA, hostB] {
            try await waitUntil("every forged record refused") { (host.control?.rejected.count ?? 0) >= Self.forged.count }
            let reasons = Set(host.control?.rejected.latest.map(\.reason) ?? [])
            #expect(reasons == expected, "\(host.control?.rejected.latest.map(\.description) ?? [])")
        }
        try await waitUntil("all 800 handled, none skipped") { handled.distinct == 800 }
        let shards = hostA.shards + hostB.shards
        #expect(shards.allSatisfy { $0.skipped == 0 && $0.state == .running }, "\(shards.map { "\($0.topicPartition) \($0.state) skipped \($0.skipped)" })")
        #expect(hostA.quarantines.isEmpty && hostB.quarantines.isEmpty, "no forged quarantine applied")
        #expect(hostA.control?.trips.isEmpty == true, "no forged trip applied")

        // A restart reads the forged records again, before it fetches: they are refused again.
        hostB.shutdown()
        try await runB.value
        let hostC = makeHost()
        let runC = Task { try await hostC.run() }
        try await waitUntil("the restarted host refused them again") { (hostC.control?.rejected.count ?? 0) >= Self.forged.count }
        _ = try await HostFixture.produce(cluster, topic: "orders", count: 200, keys: 40)
        try await waitUntil("all 1,000 handled") { handled.distinct == 1_000 }
        #expect((hostA.shards + hostC.shards).allSatisfy { $0.skipped == 0 })
        hostC.shutdown()
        try await runC.value
        hostA.shutdown()
        try await runA.value
    }
}
