import Foundation
import Logging
import Prometheus
import Sluice
import SluiceAdmin
import SluiceKafka
import SluiceTesting
import Testing

@Suite("sluice flags and status against a running host", .timeLimit(.minutes(2)))
struct AdminCommandTests {
    @Test(
        "forged control records (a heartbeat dated Int64.min, a quarantine of Int64.max offsets) once trapped flags list, status and shards list: each now exits 0 and counts them"
    )
    func forgedRecordsDoNotTrapTheCLI() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = "cli-forged-\(UInt32.random(in: 0...UInt32.max))"
        let topic = "__sluice-control-\(group)"
        try cluster.createTopic(topic, partitions: 1)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: Logger(label: "test"))
        for (key, value) in [
            ("host/forged", #"{"v":1,"applied":1,"atMillis":-9223372036854775808,"shards":{"orders/0":"running"}}"#),
            ("quarantine/orders/0", #"{"v":1,"state":"suspect","offset":0,"count":9223372036854775807}"#),
            ("flag/orders", #"{"v":1,"state":"off","who":"ana"}"#),
        ] {
            _ = try await producer.send(
                ProducerRecord(topic: topic, partition: 0, key: Array(key.utf8), value: Array(value.utf8)))
        }
        await producer.close()
        for command in [["flags", "list"], ["status"], ["shards", "list"]] {
            let run = try await runCLI(command + ["--bootstrap", cluster.bootstrapServers, "--group", group])
            #expect(run.status == 0, "\(command): \(run.errors)")
            if command == ["flags", "list"] {
                #expect(
                    run.output.contains("orders") && run.output.contains("off"),
                    "the good record is read: \(run.output)")
                #expect(run.output.contains("2 control record(s) could not be read"), "\(run.output)")
            }
        }
    }

    @Test(
        "librdkafka properties from a file (--properties-file, as Kafka's tools take them): used to reach the brokers, overridden by --property; a mistyped secret's value and a bad line are never printed"
    )
    func propertiesFile() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = "cli-properties-\(UInt32.random(in: 0...UInt32.max))"
        try cluster.createTopic("__sluice-control-\(group)", partitions: 1)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-properties-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        func file(_ text: String) throws -> String {
            let path = directory.appendingPathComponent("client-\(UUID().uuidString).properties").path
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let good = try file("# how to reach the brokers\nsocket.timeout.ms = 10000\n\nclient.id=ops-laptop\n")
        let listed = try await runCLI([
            "flags", "list", "--bootstrap", cluster.bootstrapServers, "--group", group, "--properties-file", good,
        ])
        #expect(listed.status == 0, "\(listed.errors)")
        // --property wins over the file: a wrong value given there is what librdkafka refuses.
        let overridden = try await runCLI([
            "flags", "list", "--bootstrap", cluster.bootstrapServers, "--group", group, "--properties-file", good,
            "--property", "socket.timeout.ms=-5",
        ])
        #expect(overridden.status != 0 && overridden.errors.contains("socket.timeout.ms"), "\(overridden.errors)")
        let mistyped = try file("sasl.pasword=hunter2-secret\n")
        let refused = try await runCLI([
            "flags", "list", "--bootstrap", cluster.bootstrapServers, "--group", group, "--properties-file", mistyped,
        ])
        #expect(refused.status != 0 && refused.errors.contains("'sasl.pasword' = (not shown)"), "\(refused.errors)")
        let badLine = try file("security.protocol=ssl\nssl.key.password hunter2-secret\n")
        let bad = try await runCLI([
            "flags", "list", "--bootstrap", cluster.bootstrapServers, "--group", group, "--properties-file", badLine,
        ])
        #expect(bad.status != 0 && bad.errors.contains("line 2: expected NAME=VALUE"), "\(bad.errors)")
        for run in [refused, bad] {
            #expect(!(run.output + run.errors).contains("hunter2"), "a secret is never printed")
        }
    }

    func runCLI(_ arguments: [String]) async throws -> (status: Int32, output: String, errors: String) {
        let process = try SluiceProcess(arguments)
        let status = await process.exit() ?? -1
        return (status, await process.output.all(), await process.errors.all())
    }

    /// A host of `group` with one topic, `orders`, and a state directory of its own.
    static func hostConfiguration(_ cluster: EmbeddedKafkaCluster, group: String) -> SluiceConfiguration {
        var kafka = SluiceConfiguration.Kafka(bootstrap: cluster.bootstrapServers, group: group)
        kafka.sessionTimeout = .seconds(6)
        var configuration = SluiceConfiguration(kafka: kafka, topics: ["orders": TopicConfiguration()])
        configuration.stateDirectory =
            FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)").path
        return configuration
    }

    @Test(
        "flags set/unset --bootstrap --group write the control topic: the group's host applies them; a bad key is refused"
    )
    func cliThroughControlTopic() async throws {
        var logger = Logger(label: "sluice.cli-control-test")
        logger.logLevel = .critical
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let group = "cli-\(UInt32.random(in: 0...UInt32.max))"
        var configuration = Self.hostConfiguration(cluster, group: group)
        configuration.control.enabled = true
        try cluster.createTopic(configuration.controlTopic, partitions: 1)
        let host = SluiceHost(configuration: configuration, logger: logger)
        host.register("orders", CountingHandler())
        let hostRun = Task { try await host.run() }
        defer { host.shutdown() }
        let deadline = ContinuousClock.now + .seconds(40)
        while host.shards.filter({ $0.state == .running }).count < 2, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        // A dry run names the one shard it would stop, on the one host, and writes nothing.
        while host.control?.hosts[host.identity]?.shards.values.filter({ $0 == "running" }).count != 2,
            ContinuousClock.now < deadline
        {
            try await Task.sleep(for: .milliseconds(50))
        }
        let preview = try await runCLI([
            "flags", "set", "orders/1", "off", "--dry-run", "--bootstrap", cluster.bootstrapServers, "--group", group,
        ])
        #expect(preview.status == 0, "\(preview.errors)")
        #expect(preview.output.contains("orders/1  running  drain, commit and stop"), "\(preview.output)")
        #expect(!preview.output.contains("orders/0"), "\(preview.output)")
        #expect(
            preview.output.hasSuffix(
                "orders/1: off would change 1 shard(s) on 1 host(s); nothing was written (--dry-run)\n"),
            "\(preview.output)")
        #expect(host.shards.allSatisfy { $0.state == .running })

        let set = try await runCLI([
            "flags", "set", "orders/1", "off", "--reason", "cli test", "--bootstrap", cluster.bootstrapServers,
            "--group", group,
        ])
        #expect(set.status == 0, "\(set.errors)")
        // The host says what it applied; the CLI waits for it and says so.
        #expect(
            set.output.hasPrefix("orders/1: off (control topic __sluice-control-\(group), offset "), "\(set.output)")
        #expect(set.output.contains("; 1/1 hosts applied in "), "\(set.output)")
        while host.shards.first(where: { $0.topicPartition.partition == 1 })?.state != .off,
            ContinuousClock.now < deadline
        {
            try await Task.sleep(for: .milliseconds(50))
        }
        let shard = host.shards.first { $0.topicPartition.partition == 1 }
        #expect(shard?.state == .off)
        #expect(shard?.flag.who?.hasSuffix("via sluice CLI") == true, "who set it is kept")
        #expect(shard?.flag == FlagSetting(enabled: false, source: "control", reason: "cli test", who: shard?.flag.who))

        let list = try await runCLI(["flags", "list", "--bootstrap", cluster.bootstrapServers, "--group", group])
        #expect(list.status == 0, "\(list.errors)")
        #expect(list.output.contains("orders/1  off    cli test"), "\(list.output)")
        #expect(list.output.contains("\(host.identity)"), "the host is listed: \(list.output)")

        let unset = try await runCLI([
            "flags", "unset", "orders/1", "--bootstrap", cluster.bootstrapServers, "--group", group,
        ])
        #expect(unset.status == 0, "\(unset.errors)")
        while host.shards.first(where: { $0.topicPartition.partition == 1 })?.state != .running,
            ContinuousClock.now < deadline
        {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(host.shards.first { $0.topicPartition.partition == 1 }?.state == .running)

        // The group's shards, from the hosts' records in the control topic (a host publishes a changed state
        // within a second).
        var shards = try await runCLI(["shards", "list", "--bootstrap", cluster.bootstrapServers, "--group", group])
        _ = await eventually(poll: .milliseconds(250)) {
            shards = try await runCLI(["shards", "list", "--bootstrap", cluster.bootstrapServers, "--group", group])
            return shards.output.contains("orders/1  running  \(host.identity)")
        }
        #expect(shards.status == 0, "\(shards.errors)")
        #expect(
            shards.output.contains("orders/0  running  \(host.identity)")
                && shards.output.contains("orders/1  running  \(host.identity)"), "\(shards.output)")
        #expect(shards.output.hasSuffix("2 shard(s) on 1 live host(s)\n"), "\(shards.output)")
        let status = try await runCLI(["status", "--bootstrap", cluster.bootstrapServers, "--group", group])
        #expect(status.status == 0, "\(status.errors)")
        #expect(
            status.output.hasPrefix("SHARD ") && status.output.contains("orders/0  running  \(host.identity)")
                && status.output.hasSuffix("2 shard(s) on 1 live host(s)\n"),
            "status --bootstrap shows the group-wide table: \(status.output)")

        // The audit log has both changes: who, why, before and after.
        let audit = try await runCLI(["audit", "--bootstrap", cluster.bootstrapServers, "--group", group])
        #expect(audit.status == 0, "\(audit.errors)")
        let entries = audit.output.split(separator: "\n").filter { $0.contains("flag/orders/1") }
        #expect(entries.count == 2, "\(audit.output)")
        #expect(
            entries.first?.contains("unset   off") == true && entries.first?.contains("cli test") == true,
            "set: before unset, after off: \(audit.output)")
        #expect(entries.last?.contains("off     unset") == true, "unset: before off, after unset: \(audit.output)")
        #expect(entries.allSatisfy { $0.contains("via sluice CLI") }, "who: \(audit.output)")

        let bad = try await runCLI([
            "flags", "set", "bad topic", "off", "--bootstrap", cluster.bootstrapServers, "--group", group,
        ])
        #expect(bad.status == 1)
        #expect(bad.errors.hasPrefix("sluice: "), "\(bad.errors)")
        let noGroup = try await runCLI(["flags", "set", "orders", "off", "--bootstrap", cluster.bootstrapServers])
        #expect(noGroup.status != 0)
        #expect(noGroup.errors.contains("--bootstrap needs --group"))
        let badProperty = try await runCLI([
            "flags", "set", "orders", "off", "--bootstrap", cluster.bootstrapServers, "--group", group, "--property",
            "nonsense",
        ])
        #expect(badProperty.status != 0)
        #expect(badProperty.errors.contains("--property 'nonsense' is not NAME=VALUE"))
        let unknownProperty = try await runCLI([
            "flags", "set", "orders", "off", "--bootstrap", cluster.bootstrapServers, "--group", group, "--property",
            "no.such.property=1",
        ])
        #expect(unknownProperty.status == 1)
        #expect(
            unknownProperty.errors.contains("librdkafka property 'no.such.property' = (not shown)"),
            "a mistyped name's value may be a secret: \(unknownProperty.errors)")
        host.shutdown()
        try await hostRun.value
    }

    @Test(
        "a control-topic write that no live host applies (the group runs without control.enabled) says so and exits 1; --no-wait writes ahead of a deploy and exits 0"
    )
    func cliWriteNobodyApplies() async throws {
        var logger = Logger(label: "sluice.cli-nobody-test")
        logger.logLevel = .critical
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let group = "cli-\(UInt32.random(in: 0...UInt32.max))"
        // A host of the group, running with the control plane off: it will never read the write.
        let configuration = Self.hostConfiguration(cluster, group: group)
        let host = SluiceHost(configuration: configuration, logger: logger)
        host.register("orders", CountingHandler())
        let hostRun = Task { try await host.run() }
        try await waitUntil("the host runs its shards") { host.shards.count == 2 }

        let set = try await runCLI([
            "flags", "set", "orders", "off", "--wait", "1", "--bootstrap", cluster.bootstrapServers, "--group", group,
        ])
        #expect(set.status == 1, "an operator is not told it worked: \(set.output) \(set.errors)")
        #expect(set.output.contains("0/0 hosts applied"), "\(set.output)")
        #expect(
            set.errors.contains("no live host of the group reads its control topic")
                && set.errors.contains("control.enabled"), "\(set.errors)")
        #expect(host.shards.allSatisfy { $0.state == .running }, "the host runs on: it does not read the control topic")

        let ahead = try await runCLI([
            "flags", "set", "orders", "on", "--no-wait", "--bootstrap", cluster.bootstrapServers, "--group", group,
        ])
        #expect(ahead.status == 0, "\(ahead.errors)")
        #expect(ahead.output.contains("not waiting for hosts (--no-wait)"), "\(ahead.output)")
        host.shutdown()
        try await hostRun.value
    }

    @Test(
        "flags set/list/unset and status; a refused change and an unreachable host exit non-zero with a clear message")
    func cliAgainstHost() async throws {
        var logger = Logger(label: "sluice.cli-admin-test")
        logger.logLevel = .critical
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        var kafka = SluiceConfiguration.Kafka(
            bootstrap: cluster.bootstrapServers, group: "cli-\(UInt32.random(in: 0...UInt32.max))")
        kafka.sessionTimeout = .seconds(6)
        var configuration = SluiceConfiguration(kafka: kafka, topics: ["orders": TopicConfiguration()])
        configuration.stateDirectory =
            FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)").path
        configuration.admin.listen = "127.0.0.1:0"
        configuration.admin.token = "s3cret"
        configuration.admin.stateFile =
            FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString).json").path
        configuration.flags.pollInterval = .milliseconds(200)
        let host = SluiceHost(configuration: configuration, logger: logger)
        host.register("orders", CountingHandler())
        let admin = try AdminServer(host: host, registry: PrometheusCollectorRegistry(), logger: logger)
        let hostRun = Task { try await host.run() }
        let adminRun = Task { try await admin.run() }
        let deadline = ContinuousClock.now + .seconds(30)
        while admin.port == nil || host.readiness.ready == false, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        let url = "http://127.0.0.1:\(try #require(admin.port))"

        let set = try await runCLI([
            "flags", "set", "orders/1", "off", "--reason", "cli test", "--admin", url, "--token", "s3cret",
        ])
        #expect(set.status == 0, "\(set.errors)")
        #expect(set.output == "orders/1: off\n")

        let unauthorized = try await runCLI(["flags", "list", "--admin", url])
        #expect(
            unauthorized.status == 1
                && unauthorized.errors.contains("reading this needs Authorization: Bearer <token>"),
            "\(unauthorized.errors)")
        let list = try await runCLI(["flags", "list", "--admin", url, "--token", "s3cret"])
        #expect(list.status == 0)
        #expect(list.output.contains("orders/1  off    admin   cli test"))

        while host.shards.first(where: { $0.topicPartition.partition == 1 })?.state != .off,
            ContinuousClock.now < deadline
        {
            try await Task.sleep(for: .milliseconds(50))
        }
        let status = try await runCLI(["status", "--admin", url, "--token", "s3cret"])
        #expect(status.status == 0)
        let lines = status.output.split(separator: "\n")
        #expect(lines.first?.hasPrefix("SHARD") == true)
        #expect(lines.contains { $0.hasPrefix("orders/0") && $0.contains("running") })
        #expect(lines.contains { $0.hasPrefix("orders/1") && $0.contains(" off ") && $0.contains("flag") })

        let refused = try await runCLI(["flags", "set", "orders", "off", "--admin", url])
        #expect(refused.status == 1)
        #expect(refused.errors == "sluice: the host refused (401): this change needs Authorization: Bearer <token>\n")

        let unset = try await runCLI(["flags", "unset", "orders/1", "--admin", url, "--token", "s3cret"])
        #expect(unset.status == 0)
        #expect(host.operatorFlags.current.isEmpty)

        let unreachable = try await runCLI(["status", "--admin", "http://127.0.0.1:1"])
        #expect(unreachable.status == 1)
        #expect(unreachable.errors.hasPrefix("sluice: cannot reach the Sluice admin API at http://127.0.0.1:1"))

        let badValue = try await runCLI(["flags", "set", "orders", "maybe", "--admin", url])
        #expect(badValue.status != 0)
        #expect(badValue.errors.contains("the value must be on, off or a rate such as 200/s, got 'maybe'"))

        host.shutdown()
        try await hostRun.value
        adminRun.cancel()
        _ = try? await adminRun.value
    }
}

struct CountingHandler: MessageHandler {
    func handle(_ message: Message, context: ShardContext) async throws {}
}
