import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Testing

/// The control topic is input from outside (docs/security.md): forged records written with a raw producer, the
/// way an attacker with produce rights would, to a group of OrderService processes, as it runs in production.
@Suite("Forged control records against service processes", .timeLimit(.minutes(4)))
struct ForgedControlProcessesTests {
    /// Each once trapped every host at every start (a heartbeat dated Int64.min, a quarantine of Int64.max
    /// offsets) or skipped work no host had quarantined (a release of 10⁹ offsets; one naming no recorded
    /// quarantine); the last two are a forged trip and a flag whose version overflows.
    static let forged: [(key: String, value: String)] = [
        ("host/forged", #"{"v":1,"applied":1,"atMillis":-9223372036854775808,"shards":{"orders/0":"running"}}"#),
        ("quarantine/orders/2", #"{"v":1,"state":"suspect","offset":0,"count":9223372036854775807,"crashes":1}"#),
        ("quarantine/orders/2", #"{"v":1,"state":"skip","offset":100,"count":1000000000,"crashes":1}"#),
        ("quarantine/orders/1", #"{"v":1,"state":"skip","offset":0,"count":5000,"crashes":1}"#),
        ("trip/orders/0", #"{"v":1,"state":"tripped","offset":-4,"reason":"forged"}"#),
        ("flag/orders", #"{"v":1e300,"state":"off"}"#),
    ]

    /// Writes records to partition 0 of `topic` with a raw producer, as anyone with produce rights could.
    func writeRaw(_ cluster: any TestKafkaCluster, topic: String, _ records: [(key: String, value: String)])
        async throws
    {
        var configuration = KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
        configuration.properties.merge(cluster.clientProperties) { _, client in client }
        let attacker = try KafkaProducer(configuration: configuration, logger: Logger(label: "attacker"))
        for record in records {
            _ = try await attacker.send(
                ProducerRecord(topic: topic, partition: 0, key: Array(record.key.utf8), value: Array(record.value.utf8))
            )
        }
        await attacker.close()
    }

    func committed(_ cluster: any TestKafkaCluster, group: String) async throws -> Int64 {
        try await cluster.committedOffsets(group: group, topic: "orders", partitions: 8).values.reduce(0, +)
    }

    @Test(
        "forged records written to a running group of two service processes: both stay up and refuse each one, every order is handled and none skipped; a process restarted on them refuses them again and handles on"
    )
    func forgedRecordsAgainstServiceProcesses() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 8, "payments": 4, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let controlTopic = "__sluice-control-\(group)"
        // The mock has no CreateTopics (it would auto-create with its defaults); on tansu the hosts create it.
        if cluster is EmbeddedKafkaCluster { try await cluster.addControlTopic(controlTopic) }
        let flags = FileManager.default.temporaryDirectory.appendingPathComponent("flags-\(UUID().uuidString).yaml")
            .path
        try "{}\n".write(toFile: flags, atomically: true, encoding: .utf8)
        func start() throws -> SluiceProcess {
            try OrderServiceTests.startService(
                cluster, group: group, environment: ["SLUICE_FLAGS_FILE": flags, "SLUICE_CONTROL_ENABLED": "true"]
            ).0
        }
        func rejections(_ service: SluiceProcess) -> Int {
            service.errors.text.split(separator: "\n").filter { $0.contains("control record rejected") }.count
        }
        let first = try start()
        var second = try start()
        #expect(await first.errors.waitFor("control plane loaded"))
        #expect(await second.errors.waitFor("control plane loaded"))
        try await TwoServiceProcessesTests.produce(cluster, count: 1_000)
        #expect(
            await eventually(poll: .milliseconds(250)) { try await committed(cluster, group: group) == 1_000 },
            "both handle")

        try await writeRaw(cluster, topic: controlTopic, Self.forged)
        for service in [first, second] {
            #expect(
                await eventually(poll: .milliseconds(100)) { rejections(service) >= Self.forged.count },
                "each forged record refused: \(service.errors.text.suffix(1_500))")
        }
        try await TwoServiceProcessesTests.produce(cluster, count: 1_000)
        #expect(
            await eventually(poll: .milliseconds(250)) { try await committed(cluster, group: group) == 2_000 },
            "every order handled after the forged records")
        #expect(first.process.isRunning && second.process.isRunning, "no host died")

        // A restart reads them again before it fetches: refused again, nothing skipped.
        second.process.terminate()
        #expect(await second.exit() == 0)
        let stopped = second
        second = try start()
        #expect(await second.errors.waitFor("control plane loaded"))
        #expect(
            await eventually(poll: .milliseconds(100)) { rejections(second) >= Self.forged.count },
            "refused again at start")
        try await TwoServiceProcessesTests.produce(cluster, count: 1_000)
        #expect(
            await eventually(poll: .milliseconds(250)) { try await committed(cluster, group: group) == 3_000 },
            "every order handled")
        var handled = 0
        for (service, running) in [(first, true), (second, true), (stopped, false)] {
            if running {
                #expect(service.process.isRunning, "no host died")
                service.process.terminate()
                #expect(await service.exit() == 0)
            }
            let log = await service.errors.all()
            #expect(!log.contains("quarantined message skipped"), "nothing skipped: \(log.suffix(1_000))")
            handled += try #require(TwoServiceProcessesTests.handledOrders(log), "\(log.suffix(2_000))")
        }
        // Committed is not handled (a skip commits too): the services count what their handler did.
        #expect(handled >= 3_000, "every order handled: \(handled)")
        print("forged control records against two service processes: \(handled) orders handled for 3000 produced")
    }

    @Test(
        "a signed group of two service processes: an unsigned flag from a raw producer is refused by both and orders flow; the CLI without the operator key refuses to write, saying why; with it, the flag stops orders on both, 2/2"
    )
    func signedGroupOfServiceProcesses() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 8, "payments": 4, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let controlTopic = "__sluice-control-\(group)"
        if cluster is EmbeddedKafkaCluster {
            try await cluster.addControlTopic(controlTopic)
            try await cluster.addTopic("__sluice-audit-\(group)", partitions: 1)
        }
        // The keys as operators make them.
        let generate = try SluiceProcess(["keys", "generate"])
        #expect(await generate.exit() == 0)
        var keys: [String: String] = [:]
        for line in await generate.output.all().split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { keys[String(parts[0])] = String(parts[1]) }
        }
        let hostKeys = keys.filter { $0.key != "SLUICE_CONTROL_OPERATOR_KEY" }
        #expect(hostKeys.count == 2 && keys["SLUICE_CONTROL_OPERATOR_KEY"] != nil, "\(keys.keys.sorted())")
        let flags = FileManager.default.temporaryDirectory.appendingPathComponent("flags-\(UUID().uuidString).yaml")
            .path
        try "{}\n".write(toFile: flags, atomically: true, encoding: .utf8)
        let services = try (0..<2).map { _ in
            try OrderServiceTests.startService(
                cluster, group: group,
                environment: ["SLUICE_FLAGS_FILE": flags, "SLUICE_CONTROL_ENABLED": "true"].merging(hostKeys) { $1 }
            ).0
        }
        for service in services { #expect(await service.errors.waitFor("control plane loaded")) }
        try await TwoServiceProcessesTests.produce(cluster, count: 1_000)
        #expect(
            await eventually(poll: .milliseconds(250)) { try await committed(cluster, group: group) == 1_000 },
            "both handle")

        // Forged: unsigned, with a raw producer.
        try await writeRaw(cluster, topic: controlTopic, [("flag/orders", #"{"v":1,"state":"off","who":"mallory"}"#)])
        for service in services {
            #expect(
                await eventually(poll: .milliseconds(100)) {
                    service.errors.text.split(separator: "\n").contains {
                        $0.contains("control record rejected") && $0.contains("sluice.reason=signature")
                    }
                }, "the unsigned flag refused: \(service.errors.text.suffix(1_500))")
        }
        // The CLI without the operator key (given the hosts' keys, as a host's environment has them) does not
        // write what every host would refuse, and says why.
        let unsigned = try SluiceProcess(
            ["flags", "set", "orders", "off", "--bootstrap", cluster.bootstrapServers, "--group", group],
            environment: hostKeys)
        let unsignedStatus = await unsigned.exit()
        let unsignedSaid = await unsigned.output.all() + unsigned.errors.all()
        #expect(unsignedStatus != 0 && unsignedSaid.contains("no operator key here"), "\(unsignedSaid)")
        try await TwoServiceProcessesTests.produce(cluster, count: 1_000)
        #expect(
            await eventually(poll: .milliseconds(250)) { try await committed(cluster, group: group) == 2_000 },
            "orders still on")

        // The operator's key: the same change stops orders on both.
        let signed = try SluiceProcess(
            ["flags", "set", "orders", "off", "--bootstrap", cluster.bootstrapServers, "--group", group],
            environment: keys)
        #expect(await signed.exit() == 0)
        let said = await signed.output.all()
        #expect(said.contains("; 2/2 hosts applied in "), "\(said)")
        for service in services { #expect(await service.errors.waitFor("sluice.flagSource=control"), "applied") }
        #expect(
            await eventually(poll: .milliseconds(250)) {
                services.map {
                    $0.errors.text.split(separator: "\n").filter {
                        $0.contains("shard stopped") && $0.contains("sluice.reason=flag")
                    }.count
                }.reduce(0, +) == 8
            }, "all eight orders shards stopped")
        try await TwoServiceProcessesTests.produce(cluster, count: 1_000)
        #expect(try await committed(cluster, group: group) == 2_000, "nothing handled while off")
        for service in services {
            service.process.terminate()
            #expect(await service.exit() == 0)
        }
    }
}
