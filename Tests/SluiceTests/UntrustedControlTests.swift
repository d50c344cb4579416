import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
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
        (
            "host/forged", #"{"v":1,"applied":1,"atMillis":-9223372036854775808,"shards":{"orders/0":"running"}}"#,
            .range
        ),
        (
            "quarantine/orders/2", #"{"v":1,"state":"suspect","offset":0,"count":9223372036854775807,"crashes":1}"#,
            .range
        ),
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
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for record in forged {
            _ = try await producer.send(
                ProducerRecord(topic: topic, partition: 0, key: Array(record.key.utf8), value: Array(record.value.utf8))
            )
        }
        await producer.close()
    }

    @Test(
        "forged records (overflowing fields, unbounded or unrecorded releases) are refused by every host, which stays up, handles every message and still refuses them after a restart"
    )
    func forgedRecordsRefused() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 4])
        let group = HostFixture.uniqueGroup()
        let configuration = ControlPlaneTests.configuration(cluster, group: group)
        try await cluster.addControlTopic(configuration.controlTopic)
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
            try await waitUntil("every forged record refused") {
                (host.control?.rejected.count ?? 0) >= Self.forged.count
            }
            let reasons = Set(host.control?.rejected.latest.map(\.reason) ?? [])
            #expect(reasons == expected, "\(host.control?.rejected.latest.map(\.description) ?? [])")
        }
        try await waitUntil("all 800 handled, none skipped") { handled.distinct == 800 }
        let shards = hostA.shards + hostB.shards
        #expect(
            shards.allSatisfy { $0.skipped == 0 && $0.state == .running },
            "\(shards.map { "\($0.topicPartition) \($0.state) skipped \($0.skipped)" })")
        #expect(hostA.quarantines.isEmpty && hostB.quarantines.isEmpty, "no forged quarantine applied")
        #expect(hostA.control?.trips.isEmpty == true, "no forged trip applied")

        // A restart reads the forged records again, before it fetches: they are refused again.
        hostB.shutdown()
        try await runB.value
        let hostC = makeHost()
        let runC = Task { try await hostC.run() }
        try await waitUntil("the restarted host refused them again") {
            (hostC.control?.rejected.count ?? 0) >= Self.forged.count
        }
        _ = try await HostFixture.produce(cluster, topic: "orders", count: 200, keys: 40)
        try await waitUntil("all 1,000 handled") { handled.distinct == 1_000 }
        #expect((hostA.shards + hostC.shards).allSatisfy { $0.skipped == 0 })
        hostC.shutdown()
        try await runC.value
        hostA.shutdown()
        try await runA.value
    }

    /// Starts a host of `configuration` with one order waiting, expecting it to refuse to start: the error it
    /// gave (nil when it did not throw) and how many messages its handler saw.
    static func refusedStart(_ cluster: any TestKafkaCluster, _ configuration: SluiceConfiguration) async throws -> (
        error: (any Error)?, handled: Int
    ) {
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        let handled = Locked(0)
        host.register("orders", ClosureHandler { _, _ in handled.withLock { $0 += 1 } })
        try await cluster.produce(topic: "orders", values: ["a"], partition: 0, logger: HostFixture.logger)
        let error = await #expect(throws: (any Error).self) { try await host.run() }
        return (error, handled.value)
    }

    @Test(
        "a control topic of two partitions (where a flag on partition 1 was silently ignored) stops the start, saying why (tansu: the mock auto-creates every topic with 4 partitions and is let be)",
        .enabled(if: TestClusters.isTansu))
    func controlTopicOfTwoPartitions() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 1])
        let configuration = ControlPlaneTests.configuration(cluster, group: HostFixture.uniqueGroup())
        try await cluster.addTopic(configuration.controlTopic, partitions: 2, config: ["cleanup.policy": "compact"])
        let (error, handled) = try await Self.refusedStart(cluster, configuration)
        #expect(
            (error as? SluiceError)?.message.contains(
                "control topic '\(configuration.controlTopic)' has 2 partitions; it must have exactly one") == true,
            "\(String(describing: error))")
        #expect(handled == 0, "nothing fetched without the control state")
    }

    @Test(
        "a missing control topic is never created by reading it: the reader names it at once, and a host with control.createTopics off refuses to start saying so"
    )
    func missingControlTopic() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 1])
        var configuration = ControlPlaneTests.configuration(cluster, group: HostFixture.uniqueGroup())
        for _ in 0..<2 {
            let reader = try ControlTopicReader(
                bootstrapServers: cluster.bootstrapServers, topic: configuration.controlTopic,
                logger: HostFixture.logger
            ) { _ in }
            let error = await #expect(throws: KafkaError.self) { try await reader.load(timeout: .seconds(30)) }
            await reader.close()
            // The second reader finds it missing too: the first created nothing.
            #expect(
                error?.message.contains("control topic '\(configuration.controlTopic)' does not exist") == true,
                "\(error.map { "\($0)" } ?? "")")
        }
        configuration.control.createTopics = false
        let (error, handled) = try await Self.refusedStart(cluster, configuration)
        #expect(String(describing: error).contains("does not exist"), "\(String(describing: error))")
        #expect(handled == 0, "nothing fetched without the control state")
    }

    @Test(
        "a control topic that is not compacted (retention would delete the group's flags and quarantines) stops the start, saying why (tansu: the mock has no DescribeConfigs)",
        .enabled(if: TestClusters.isTansu))
    func controlTopicNotCompacted() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 1])
        let configuration = ControlPlaneTests.configuration(cluster, group: HostFixture.uniqueGroup())
        let created = try await KafkaTopicAdmin.ensure(
            .init(
                name: configuration.controlTopic, partitions: 1, replicationFactor: 1,
                config: ["cleanup.policy": "delete"]),
            bootstrapServers: cluster.bootstrapServers, timeout: .seconds(30))
        #expect(created == .created)
        let (error, handled) = try await Self.refusedStart(cluster, configuration)
        #expect(
            (error as? SluiceError)?.message.contains(
                "control topic '\(configuration.controlTopic)' has cleanup.policy=delete; it must be compacted")
                == true, "\(String(describing: error))")
        #expect(handled == 0, "nothing fetched on a control topic that forgets")
    }

    @Test(
        "a signed group: an unsigned flag or one a host key signed is refused and orders keep flowing; the operator's signed flag stops them; heartbeats verify; the audit names the signer"
    )
    func signedGroup() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 2])
        let group = HostFixture.uniqueGroup()
        let generated = ControlKeys.generate()
        var configuration = ControlPlaneTests.configuration(cluster, group: group)
        configuration.control.hostKey = generated.hostKey
        configuration.control.operatorPublicKey = generated.operatorPublicKey
        try await cluster.addControlTopic(configuration.controlTopic)
        try await cluster.addTopic(ControlPlaneWriter.auditTopic(forControl: configuration.controlTopic), partitions: 1)
        let handled = HandledMessages()
        let hosts = (0..<2).map { _ in
            let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
            host.register("orders", ClosureHandler { message, _ in handled.append(message) })
            return host
        }
        let runs = hosts.map { host in Task { try await host.run() } }
        _ = try await HostFixture.produce(cluster, topic: "orders", count: 200, keys: 20)
        try await waitUntil("200 handled", timeout: .seconds(90)) { handled.distinct == 200 }
        try await waitUntil("each host sees both hosts' signed heartbeats") {
            hosts.allSatisfy { ($0.control?.hosts.count ?? 0) == 2 }
        }

        // Forged: unsigned, and signed with the host key (which every host holds) as a host.
        let off = ControlRecord.flag(.topic("orders"), enabled: false, reason: "forged", who: "mallory").encoded
        let hostKeys = try #require(try configuration.control.keys())
        let asHost = try hostKeys.sign(topic: configuration.controlTopic, signer: .host, key: off.key, value: off.value)
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for headers in [[], asHost] {
            _ = try await producer.send(
                ProducerRecord(
                    topic: configuration.controlTopic, partition: 0, key: Array(off.key.utf8), value: off.value,
                    headers: headers))
        }
        await producer.close()
        for host in hosts {
            try await waitUntil("both refused, as signature") {
                (host.control?.rejected.latest.filter { $0.reason == .signature && $0.key == "flag/orders" }.count ?? 0)
                    == 2
            }
        }
        _ = try await HostFixture.produce(cluster, topic: "orders", count: 200, keys: 20)
        try await waitUntil("the next 200 handled: orders still on") { handled.distinct == 400 }
        #expect((hosts[0].shards + hosts[1].shards).allSatisfy { $0.state == .running })

        // The operator's CLI key: the same flag, signed, stops the topic on every host.
        let operatorKeys = try ControlKeys(
            hostKeys: [], operatorPublicKeys: [], operatorPrivateKey: generated.operatorKey)
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: configuration.controlTopic, keys: operatorKeys,
            logger: HostFixture.logger)
        try await writer.setFlag(.topic("orders"), enabled: false, reason: "incident", who: "ana")
        // A writer holding only the operator key cannot write what hosts write.
        await #expect(throws: SluiceError.self) {
            try await writer.setTrip(TopicPartition("orders", 0), .init(offset: 0, reason: "forged"))
        }
        await writer.close()
        try await waitUntil("orders off on both hosts") {
            let shards = hosts[0].shards + hosts[1].shards
            return shards.count == 2 && shards.allSatisfy { $0.state == .off && $0.flag.source == "control" }
        }
        let audit = Locked<[AuditEntry]>([])
        let reader = try ControlTopicReader(
            bootstrapServers: cluster.bootstrapServers,
            topic: ControlPlaneWriter.auditTopic(forControl: configuration.controlTopic), logger: HostFixture.logger
        ) { record in
            if let entry = record.value.flatMap(AuditEntry.init(decoding:)) { audit.withLock { $0.append(entry) } }
        }
        try await reader.load(timeout: .seconds(30))
        await reader.close()
        let entries = audit.value
        #expect(
            entries.contains { $0.subject == "flag/orders" && $0.signer == .operator && $0.who == "ana" }, "\(entries)")
        for host in hosts { host.shutdown() }
        for run in runs { try await run.value }
    }
}
