import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@Suite("Two OrderService processes in one group", .timeLimit(.minutes(3)))
struct TwoServiceProcessesTests {
    let logger = Logger(label: "sluice.two-services-test")

    /// A service whose flags come from the file alone (this test is about the flag file and partitions handed
    /// back paused; the example's control plane is off here). Open finding: one fresh-clone run (control plane
    /// on) and one unloaded CI run (off) saw a handed-back partition run unpaused and make no progress for 30 s
    /// (lag 560, lag 480) while the others fetched; its librdkafka position was set, so it had delivered in its
    /// new assignment (the position is reset when a fetcher stops). Not reproduced in 23 runs beside load; the
    /// stall report now includes the consumer's view of the partition (its queue, buffer, pause state).
    func start(_ cluster: any TestKafkaCluster, group: String, flags: String) throws -> (SluiceProcess, OutputCollector)
    {
        let (service, _) = try OrderServiceTests.startService(
            cluster, group: group, environment: ["SLUICE_FLAGS_FILE": flags, "SLUICE_CONTROL_ENABLED": "false"])
        return (service, service.errors)
    }

    /// `count` orders over 50 keys with `sluice produce`, through the cluster's client properties (TLS, say).
    static func produce(_ cluster: any TestKafkaCluster, count: Int) async throws {
        var arguments = [
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "orders", "--count", "\(count)", "--keys",
            "50",
        ]
        for (name, value) in cluster.clientProperties.sorted(by: { $0.key < $1.key }) {
            arguments += ["--property", "\(name)=\(value)"]
        }
        let produce = try SluiceProcess(arguments)
        await produce.expectCleanExit()
    }

    func committed(_ cluster: any TestKafkaCluster, group: String) async throws -> Int64 {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        let checker = try KafkaConsumer(configuration: configuration, logger: logger)
        let offsets = try await checker.committedOffsets(for: (0..<8).map { TopicPartition("orders", Int32($0)) })
        await checker.close()
        return offsets.values.reduce(0, +)
    }

    static func handledOrders(_ output: String) -> Int? {
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("order-service stopped: ") }) else {
            return nil
        }
        return line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }.first
    }

    /// The end-to-end form of a partition left paused in librdkafka: `orders` flagged off, a second host
    /// takes half the partitions, the flag goes back on, the second host leaves; the partitions handed back
    /// (paused when they were revoked) must fetch again. Also: a graceful join and leave under the 2.0.2
    /// client hands no message to two hosts.
    @Test("flag off, a second host joins and leaves, flag on: every order handled, the handed-back partitions fetch")
    func handBackAfterFlagCycle() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 8, "payments": 4, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let flags = FileManager.default.temporaryDirectory.appendingPathComponent("flags-\(UUID().uuidString).yaml")
            .path
        try "orders: off\n".write(toFile: flags, atomically: true, encoding: .utf8)
        try await Self.produce(cluster, count: 4_000)

        let (first, firstOutput) = try start(cluster, group: group, flags: flags)
        #expect(await firstOutput.waitFor("partitions assigned"), "the first host owns every partition")
        let (second, secondOutput) = try start(cluster, group: group, flags: flags)
        #expect(await firstOutput.waitFor("partitions revoked"), "the first host gave some up while they were paused")

        try "{}\n".write(toFile: flags + ".new", atomically: false, encoding: .utf8)
        #expect(rename(flags + ".new", flags) == 0)  // atomic replace: flag on
        let firstBatchCommitted = await eventually(poll: .milliseconds(250)) {
            try await committed(cluster, group: group) == 4_000
        }
        #expect(firstBatchCommitted, "both hosts handled their halves")

        second.process.terminate()  // graceful leave
        #expect(await second.exit() == 0)
        try await Self.produce(cluster, count: 4_000)
        let allCommitted = await eventually(poll: .milliseconds(250)) {
            try await committed(cluster, group: group) == 8_000
        }
        #expect(allCommitted, "the handed-back partitions fetch and are handled")

        first.process.terminate()
        #expect(await first.exit() == 0)
        let firstLog = await firstOutput.all()
        let secondLog = await secondOutput.all()
        if !allCommitted || firstLog.contains("partitions lost") || secondLog.contains("partitions lost") {
            // Seen in CI runs: what each host's shards and group did, for the next look.
            for (name, log) in [("first", firstLog), ("second", secondLog)] {
                let lines = log.split(separator: "\n").filter { line in
                    [
                        "partitions", "shard", "flag changed", "commit", "stalled", "rebalance", "lost", "fetcher",
                        "librdkafka",
                    ].contains { line.contains($0) }
                }
                print("--- \(name) host, shard and group lines ---\n" + lines.suffix(200).joined(separator: "\n"))
            }
        }
        let handledFirst = try #require(Self.handledOrders(firstLog), "\(firstLog.suffix(2_000))")
        let handledSecond = try #require(Self.handledOrders(secondLog), "\(secondLog.suffix(2_000))")
        #expect(!firstLog.contains("partitions lost") && !secondLog.contains("partitions lost"), "revoked, never lost")
        // 0 in most runs; a revocation commit the embedded cluster refuses while the group joins (SluiceKafka's
        // EmbeddedCluster article) can hand the second host what the first did since its last commit.
        let duplicates = handledFirst + handledSecond - 8_000
        #expect(duplicates >= 0 && duplicates <= 1_000, "orders handled twice: \(duplicates)")
        print("two OrderService processes: \(duplicates) orders handled twice")
    }

    /// Group-wide flags through the control topic, as operators would use them: two service processes, one
    /// CLI write each way.
    @Test(
        "one `sluice flags set --bootstrap --group` stops the topic on both service processes; one unset resumes both; nothing lost"
    )
    func controlPlaneFlagAcrossProcesses() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 8, "payments": 4, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        // The mock has no CreateTopics (it would auto-create with its defaults); on tansu the hosts create it.
        if cluster is EmbeddedKafkaCluster { try await cluster.addControlTopic("__sluice-control-\(group)") }
        let flags = FileManager.default.temporaryDirectory.appendingPathComponent("flags-\(UUID().uuidString).yaml")
            .path
        try "{}\n".write(toFile: flags, atomically: true, encoding: .utf8)
        func startWithControl() throws -> (SluiceProcess, OutputCollector) {
            let (service, _) = try OrderServiceTests.startService(
                cluster, group: group, environment: ["SLUICE_FLAGS_FILE": flags, "SLUICE_CONTROL_ENABLED": "true"])
            return (service, service.errors)
        }
        let (first, firstOutput) = try startWithControl()
        let (second, secondOutput) = try startWithControl()
        #expect(await firstOutput.waitFor("control plane loaded"))
        #expect(await secondOutput.waitFor("control plane loaded"))
        try await Self.produce(cluster, count: 2_000)
        #expect(
            await eventually(poll: .milliseconds(250)) { try await committed(cluster, group: group) == 2_000 },
            "both handle while on")
        #expect(await secondOutput.waitFor("partitions assigned"), "the second host owns some partitions")

        let set = try SluiceProcess([
            "flags", "set", "orders", "off", "--bootstrap", cluster.bootstrapServers, "--group", group, "--reason",
            "incident",
        ])
        #expect(await set.exit() == 0)
        let said = await set.output.all()
        #expect(said.contains("; 2/2 hosts applied in "), "the CLI waited for both hosts: \(said)")
        print("control plane flag: \(said.split(separator: ";").last.map(String.init) ?? said)")
        // Every orders shard of both hosts stopped for the flag (payments shards run on). A host logs "flag
        // changed" only for the shards it owns when the record arrives: one still taking its share in a
        // cooperative rebalance starts its new orders shards stopped instead (seen in CI: the second host had
        // acknowledged the record and logged no change). So the stops are counted over both hosts, each
        // partition once (one that moved after it stopped is stopped on both), and the change lines there are
        // checked for their source.
        #expect(
            await eventually(poll: .milliseconds(250)) {
                let stopped = (firstOutput.text + secondOutput.text).split(separator: "\n").filter {
                    $0.contains("shard stopped") && $0.contains("sluice.reason=flag")
                }.compactMap { line in
                    line.split(separator: " ").first { $0.hasPrefix("kafka.partition=") }
                }
                return Set(stopped).count == 8
            }, "all eight orders shards stopped")
        let changes = (firstOutput.text + secondOutput.text).split(separator: "\n").filter {
            $0.contains("flag changed") && $0.contains("sluice.flag=off")
        }
        #expect(changes.allSatisfy { $0.contains("sluice.flagSource=control") }, "\(changes)")
        try await Self.produce(cluster, count: 2_000)
        #expect(try await committed(cluster, group: group) == 2_000, "nothing handled while off")
        let unset = try SluiceProcess([
            "flags", "unset", "orders", "--bootstrap", cluster.bootstrapServers, "--group", group,
        ])
        #expect(await unset.exit() == 0)
        #expect(
            await eventually(poll: .milliseconds(250)) { try await committed(cluster, group: group) == 4_000 },
            "both resume; nothing lost")
        first.process.terminate()
        second.process.terminate()
        #expect(await first.exit() == 0)
        #expect(await second.exit() == 0)
    }

}
