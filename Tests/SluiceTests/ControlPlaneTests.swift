import Foundation
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

@Suite("Control records", .timeLimit(.minutes(1)))
struct ControlRecordTests {
    static func value(_ json: String) -> [UInt8] { Array(json.utf8) }

    @Test("flag records: on, off and an explicit unset, with reason and who; written the way they are read")
    func flagRecords() throws {
        #expect(
            try ControlRecord.parse(
                key: "flag/orders", value: Self.value(#"{"v":1,"state":"off","reason":"incident 42","who":"ana"}"#),
                offset: 3)
                == .flag(.topic("orders"), enabled: false, reason: "incident 42", who: "ana"))
        #expect(
            try ControlRecord.parse(key: "flag/orders/3", value: Self.value(#"{"v":1,"state":"on"}"#), offset: 4)
                == .flag(.partition(TopicPartition("orders", 3)), enabled: true, reason: nil, who: nil))
        #expect(
            try ControlRecord.parse(key: "flag/*", value: Self.value(#"{"v":1,"state":"unset"}"#), offset: 5)
                == .flag(.all, enabled: nil, reason: nil, who: nil))
        #expect(
            try ControlRecord.parse(key: "flag/orders", value: nil, offset: 6)
                == .flag(.topic("orders"), enabled: nil, reason: nil, who: nil))
        #expect(
            try ControlRecord.parse(key: "audit/42", value: Self.value("{}"), offset: 7) == nil,
            "kinds not acted on yet are passed over")
        let record = ControlRecord.flag(
            .partition(TopicPartition("orders", 1)), enabled: false, reason: "slow db", who: "cli")
        let (key, value) = record.encoded
        #expect(key == "flag/orders/1")
        #expect(try ControlRecord.parse(key: key, value: value, offset: 0) == record)
    }

    @Test("rate flags: N/s is on with a limit; nonsense rates are refused")
    func rateRecords() throws {
        let record = ControlRecord.flag(.topic("orders"), enabled: true, reason: "degrade", who: nil, rate: 200)
        let (key, value) = record.encoded
        #expect(String(decoding: value, as: UTF8.self).contains(#""state":"200/s""#))
        #expect(try ControlRecord.parse(key: key, value: value, offset: 0) == record)
        #expect(ControlRecord.parseRate("2.5/s") == 2.5)
        for bad in ["0/s", "-1/s", "abc/s", "200", "1e9/s", "nan/s"] {
            #expect(ControlRecord.parseRate(bad) == nil, "\(bad)")
        }
    }

    @Test("trip records: tripped with offset and reason, clear; written the way they are read; bad keys refused")
    func tripRecords() throws {
        let tripped = ControlRecord.trip(
            TopicPartition("orders", 3), .init(offset: 42, reason: "handler failed at offset 42: boom"))
        let (key, value) = tripped.encoded
        #expect(key == "trip/orders/3")
        #expect(try ControlRecord.parse(key: key, value: value, offset: 0) == tripped)
        #expect(
            try ControlRecord.parse(key: "trip/orders/3", value: Self.value(#"{"v":1,"state":"clear"}"#), offset: 1)
                == .trip(TopicPartition("orders", 3), nil))
        #expect(throws: ControlRecordRejected.self) {
            try ControlRecord.parse(key: "trip/orders", value: Self.value(#"{"v":1,"state":"clear"}"#), offset: 2)
        }
        #expect(throws: ControlRecordRejected.self) {
            try ControlRecord.parse(key: "trip/orders/3", value: Self.value(#"{"v":1,"state":"melted"}"#), offset: 3)
        }
    }

    @Test("command records: a reset names its shard; unknown actions and bad shards are refused")
    func commandRecords() throws {
        let command = ControlCommand(action: .reset, topicPartition: TopicPartition("orders", 3), who: "ops")
        let (key, value) = ControlRecord.command("c1", command).encoded
        #expect(key == "command/c1")
        #expect(try ControlRecord.parse(key: key, value: value, offset: 1) == .command("c1", command))
        #expect(throws: ControlRecordRejected.self) {
            try ControlRecord.parse(
                key: "command/c2", value: Self.value(#"{"v":1,"action":"explode","shard":"orders/3"}"#), offset: 2)
        }
        #expect(throws: ControlRecordRejected.self) {
            try ControlRecord.parse(
                key: "command/c3", value: Self.value(#"{"v":1,"action":"reset","shard":"orders"}"#), offset: 3)
        }
        #expect(throws: ControlRecordRejected.self) {
            try ControlRecord.parse(
                key: "command/", value: Self.value(#"{"v":1,"action":"reset","shard":"orders/1"}"#), offset: 4)
        }
    }

    @Test("host records: applied position and heartbeat; gone when the host left")
    func hostRecords() throws {
        let status = ControlRecord.host(
            "pod-1",
            ControlHostStatus(applied: 12, atMilliseconds: 1_000, shards: ["orders/0": "running", "orders/1": "off"]))
        let (key, value) = status.encoded
        #expect(key == "host/pod-1")
        #expect(try ControlRecord.parse(key: key, value: value, offset: 0) == status)
        let gone = ControlRecord.host("pod-1", nil).encoded
        #expect(try ControlRecord.parse(key: gone.key, value: gone.value, offset: 1) == .host("pod-1", nil))
        #expect(throws: ControlRecordRejected.self) {
            try ControlRecord.parse(key: "host/pod-1", value: Self.value(#"{"v":1}"#), offset: 2)
        }

        // With shard details: pause reasons, lag and counts round-trip; a detail that cannot be read is left out.
        var stopped = ShardReport(topicPartition: TopicPartition("orders", 1), state: "off")
        stopped.pauseReasons = ["flag"]
        stopped.lag = 40
        stopped.committedOffset = 100
        stopped.highWatermark = 140
        stopped.processed = 100
        stopped.attempt = 2
        stopped.lastError = "cannot price it"
        stopped.restartInSeconds = 1.5
        var withCounts = ControlHostStatus(
            applied: 3, atMilliseconds: 2_000, shards: ["orders/1": "off"], details: ["orders/1": stopped],
            startedAtMilliseconds: 1_500)
        withCounts.shardCrashes = 4
        withCounts.shardRestarts = 3
        let detailed = ControlRecord.host("pod-2", withCounts)
        let encoded = detailed.encoded
        #expect(try ControlRecord.parse(key: encoded.key, value: encoded.value, offset: 3) == detailed)
        let odd = try ControlRecord.parse(
            key: "host/pod-3",
            value: Self.value(
                #"{"v":1,"applied":1,"atMillis":5,"shards":{"orders/0":"running"},"details":{"orders/0":7}}"#),
            offset: 4)
        #expect(
            odd == .host("pod-3", ControlHostStatus(applied: 1, atMilliseconds: 5, shards: ["orders/0": "running"])))
        // A detail out of range is left out too, and the others stay.
        let mixed = try ControlRecord.parse(
            key: "host/pod-4",
            value: Self.value(
                #"{"v":1,"applied":1,"atMillis":5,"shards":{"orders/0":"running","orders/1":"off"},"details":{"orders/0":{"topic":"orders","partition":0,"state":"running","lag":-5},"orders/1":{"topic":"orders","partition":1,"state":"off","lag":7,"processed":3}}}"#
            ),
            offset: 5)
        guard case .host(_, let status?) = mixed else {
            Issue.record("not read: \(String(describing: mixed))")
            return
        }
        #expect(status.details["orders/0"] == nil)
        #expect(status.details["orders/1"]?.lag == 7 && status.details["orders/1"]?.processed == 3)
    }

    @Test("bad records are refused naming the key, the offset and the problem")
    func badRecords() {
        func message(_ key: String, _ value: String?) -> String {
            do {
                _ = try ControlRecord.parse(key: key, value: value.map(Self.value), offset: 9)
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(
            message("flag/orders", "not json")
                == "control record 'flag/orders' at offset 9: the value is not a JSON object")
        #expect(
            message("flag/orders", #"{"state":"off"}"#)
                == "control record 'flag/orders' at offset 9: no schema version 'v'")
        #expect(
            message("flag/orders", #"{"v":2,"state":"off"}"#)
                == "control record 'flag/orders' at offset 9: schema version 2 is not understood (this host reads 1); the flag keeps its previous state"
        )
        #expect(
            message("flag/orders", #"{"v":1,"state":"maybe"}"#)
                == "control record 'flag/orders' at offset 9: state must be on, off, unset or a rate such as 200/s, got 'maybe'"
        )
        #expect(
            message("flag/bad topic", #"{"v":1,"state":"off"}"#).hasPrefix(
                "control record 'flag/bad topic' at offset 9: "))
    }

    @Test(
        "hostile values are refused before anything is computed from them, with the field and the reason",
        arguments: [
            (
                "host/forged", #"{"v":1,"applied":1,"atMillis":-9223372036854775808,"shards":{}}"#,
                ControlRecordRejected.Reason.range, "'atMillis'"
            ),
            ("host/forged", #"{"v":1,"applied":-1,"atMillis":5,"shards":{}}"#, .range, "'applied'"),
            ("host/forged", #"{"v":1,"applied":1e300,"atMillis":5}"#, .field, "'applied' must be an integer"),
            ("host/forged", #"{"v":1,"applied":true,"atMillis":5}"#, .field, "'applied' must be an integer"),
            (
                "host/forged", #"{"v":1,"applied":1,"atMillis":5,"startedAtMillis":99999999999999999999}"#, .field,
                "'startedAtMillis'"
            ),
            ("host/forged", #"{"v":1,"applied":1,"atMillis":5,"shardCrashes":-3}"#, .range, "'shardCrashes'"),
            ("host/forged", #"{"v":1,"applied":1,"atMillis":5,"shards":{"orders/0":7}}"#, .field, "'shards'"),
            (
                "quarantine/orders/2", #"{"v":1,"state":"suspect","offset":100,"count":9223372036854775807}"#, .range,
                "'count'"
            ),
            ("quarantine/orders/2", #"{"v":1,"state":"skip","offset":100,"count":1000000000}"#, .range, "'count'"),
            ("quarantine/orders/2", #"{"v":1,"state":"quarantined","offset":9223372036854775807}"#, .range, "'offset'"),
            ("quarantine/orders/2", #"{"v":1,"state":"quarantined","offset":1.5}"#, .field, "'offset'"),
            ("quarantine/orders/2", #"{"v":1,"state":"quarantined","offset":1,"crashes":-1}"#, .range, "'crashes'"),
            ("quarantine/orders/2", #"{"v":1,"state":"quarantined","offset":1,"atMillis":-5}"#, .range, "'atMillis'"),
            ("quarantine/orders/2", #"{"v":1,"state":7,"offset":1}"#, .field, "'state' must be a string"),
            ("trip/orders/2", #"{"v":1,"state":"tripped","offset":-4}"#, .range, "'offset'"),
            ("flag/orders", #"{"v":1e300,"state":"off"}"#, .field, "'v' must be an integer"),
            (
                "flag/orders", #"{"v":1,"state":"off","who":"\#(String(repeating: "x", count: 300))"}"#, .range,
                "'who' is longer"
            ),
            ("command/c1", #"{"v":1,"action":"reset","shard":"orders/99999999999"}"#, .field, "TOPIC/PARTITION"),
            ("trip/orders/99999999999", #"{"v":1,"state":"clear"}"#, .key, "trip/TOPIC/PARTITION"),
        ])
    func hostileValues(key: String, value: String, reason: ControlRecordRejected.Reason, names: String) {
        do {
            let record = try ControlRecord.parse(key: key, value: Self.value(value), offset: 11)
            Issue.record("accepted: \(String(describing: record))")
        } catch {
            #expect(error.reason == reason, "\(error)")
            #expect(error.description.contains(names), "\(error)")
            #expect(error.key == key && error.offset == 11)
        }
    }

    @Test("audit entries: written and read back with and without their optional fields; out-of-range ones are not read")
    func auditEntries() {
        var full = AuditEntry(
            atMilliseconds: 5, who: "ana", reason: "incident", subject: "flag/orders", before: "on", after: "off",
            controlOffset: 3)
        full.signer = .operator
        #expect(AuditEntry(decoding: full.encoded) == full)
        let bare = AuditEntry(
            atMilliseconds: 5, who: nil, reason: nil, subject: "flag/orders", before: nil, after: "off",
            controlOffset: 3)
        #expect(AuditEntry(decoding: bare.encoded) == bare)
        for hostile in [
            #"{"v":1,"atMillis":-9223372036854775808,"subject":"flag/orders","after":"off","controlOffset":1}"#,
            #"{"v":1,"atMillis":5,"subject":"flag/orders","after":"off","controlOffset":1e300}"#,
            #"{"v":1,"atMillis":5,"subject":"flag/orders","after":"off","controlOffset":1,"who":7}"#,
        ] {
            #expect(AuditEntry(decoding: Array(hostile.utf8)) == nil, "\(hostile)")
        }
    }

    @Test("quarantine ranges and summaries never overflow, whatever a Quarantine holds")
    func quarantineArithmetic() {
        let extreme = Quarantine(
            offset: .max - 1, count: .max, crashes: .max, state: .suspect, signal: "SIGILL", host: "h",
            atMilliseconds: .min)
        #expect(extreme.range == (Int64.max - 1)..<Int64.max)
        #expect(extreme.summary.contains("offsets \(Int64.max - 1)..<\(Int64.max)"))
        #expect(Int64.min.milliseconds(since: 5) == .min && Int64(5).milliseconds(since: .min) == .max)
        #expect(Int64.max.adding(saturating: 1) == .max && Int64.min.adding(saturating: -1) == .min)
    }
}

@Suite("The control plane on Kafka", .timeLimit(.minutes(3)))
struct ControlPlaneTests {
    static func configuration(_ cluster: any TestKafkaCluster, group: String) -> SluiceConfiguration {
        var configuration = HostFixture.configuration(cluster, group: group, topics: ["orders": TopicConfiguration()])
        configuration.control.enabled = true
        return configuration
    }

    @Test(
        "the broker answers the control reader's position as out of range (as after the topic was deleted and created again): the tables are emptied and the topic read from its beginning, nothing doubled"
    )
    func controlTopicReadAgain() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let topic = "__sluice-control-\(HostFixture.uniqueGroup())"
        try cluster.createTopic(topic, partitions: 1)
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: topic, logger: HostFixture.logger)
        try await writer.setFlag(.topic("orders"), enabled: false, reason: "incident", who: "ana")
        try await writer.send(ControlCommand(action: .reset, topicPartition: TopicPartition("orders", 1), who: "ana"))
        let source = try ControlPlaneFlagSource(
            bootstrapServers: cluster.bootstrapServers, topic: topic, logger: HostFixture.logger)
        try await source.load(timeout: .seconds(30))
        #expect(
            source.flag(.topic("orders"))?.enabled == false && source.commands(from: 0).count == 1
                && source.topicRecreations == 0)
        // The next fetch of the reader's position is answered OFFSET_OUT_OF_RANGE (1), as Kafka answers a position
        // past the end of a recreated topic.
        cluster.pushRequestErrors(apiKey: .fetch, errors: [KafkaErrorCode(rawValue: 1)])
        let written = try await writer.setFlag(
            .partition(TopicPartition("orders", 0)), enabled: false, reason: "second", who: "ana")
        await writer.close()
        try await waitUntil("read again from the beginning, up to the new record") {
            source.topicRecreations == 1 && source.appliedPosition > written
        }
        #expect(
            source.flag(.topic("orders"))?.enabled == false
                && source.flag(.partition(TopicPartition("orders", 0)))?.enabled == false)
        #expect(source.commands(from: 0).count == 1, "the command is not doubled")
        await source.close()
    }

    @Test(
        "a flag written to the control topic reaches every host of the group; a host started after it never handles the topic; back on, all is handled"
    )
    func flagReachesTheGroup() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 4])
        let group = HostFixture.uniqueGroup()
        let configuration = Self.configuration(cluster, group: group)
        try await cluster.addControlTopic(configuration.controlTopic)
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: configuration.controlTopic, logger: HostFixture.logger)
        // Written before any host starts: the first host reads it before it fetches.
        try await writer.setFlag(.topic("orders"), enabled: false, reason: "incident", who: "test")
        try await HostFixture.produce(cluster, topic: "orders", count: 400, keys: 40)

        let handled = HandledMessages()
        let hostA = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        hostA.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let runA = Task { try await hostA.run() }
        let hostB = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        hostB.register("orders", ClosureHandler { message, _ in handled.append(message) })
        defer {
            hostA.shutdown()
            hostB.shutdown()
        }
        try await waitUntil("A holds all four shards, off") {
            hostA.shards.count == 4 && hostA.shards.allSatisfy { $0.state == .off && $0.flag.source == "control" }
        }
        let runB = Task { try await hostB.run() }
        try await waitUntil("the group split the shards, all off", timeout: .seconds(60)) {
            hostA.shards.count == 2 && hostB.shards.count == 2
                && (hostA.shards + hostB.shards).allSatisfy { $0.state == .off }
        }
        #expect(handled.count == 0, "nothing handled while the control plane says off")
        // One write turns it back on for both.
        try await writer.setFlag(.topic("orders"), enabled: nil, reason: "resolved", who: "test")
        try await waitUntil("everything handled") { handled.distinct == 400 }
        #expect((hostA.shards + hostB.shards).allSatisfy { $0.state == .running })
        // And off again, this time one partition.
        try await writer.setFlag(
            .partition(TopicPartition("orders", 1)), enabled: false, reason: "slow db", who: "test")
        try await waitUntil("orders/1 off on whichever host has it") {
            (hostA.shards + hostB.shards).first { $0.topicPartition == TopicPartition("orders", 1) }?.state == .off
        }
        await writer.close()
        hostB.shutdown()
        try await runB.value
        hostA.shutdown()
        try await runA.value
    }

    @Test(
        "a trip follows the partition: the next host starts it tripped without calling the handler; a reset command through the control topic clears it for the group"
    )
    func tripFollowsThePartition() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 2])
        let group = HostFixture.uniqueGroup()
        var orders = TopicConfiguration()
        orders.breaker = .latched
        var configuration = HostFixture.configuration(cluster, group: group, topics: ["orders": orders])
        configuration.control.enabled = true
        try await cluster.addControlTopic(configuration.controlTopic)
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for index in 0..<20 {
            _ = try await producer.send(
                ProducerRecord(topic: "orders", partition: Int32(index % 2), value: Array("\(index)".utf8)))
        }
        await producer.close()
        let poisoned = TopicPartition("orders", 0)

        let first = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        first.register(
            "orders",
            ClosureHandler { message, _ in
                if message.partition == 0, message.offset == 3 { throw TestFailure(description: "cannot price it") }
            })
        let firstRun = Task { try await first.run() }
        do {
            try await waitUntil("the first host tripped orders/0 and the group knows") {
                first.control?.trip(for: poisoned) != nil
            }
        } catch {
            // Seen once in a full run with librdkafka 2.16 (not again in 9 runs of its suite, 6 of them with the
            // machine loaded): whether the shard tripped here and the record did not come back, or it never tripped.
            let shards = first.shards.map { "\($0.topicPartition) \($0.state) \($0.lastError ?? "-")" }
            print("tripFollowsThePartition, first host: shards \(shards)")
            throw error
        }
        #expect(first.control?.trip(for: poisoned)?.offset == 3)
        first.shutdown()
        try await firstRun.value

        let calls = Locked<[Int32: Int]>([:])
        let fixed = Locked(false)
        let second = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        second.register(
            "orders",
            ClosureHandler { message, _ in
                calls.withLock { $0[message.partition, default: 0] += 1 }
                if message.partition == 0, message.offset == 3, !fixed.value {
                    throw TestFailure(description: "cannot price it")
                }
            })
        let secondRun = Task { try await second.run() }
        defer { second.shutdown() }
        try await waitUntil("the second host holds orders/0 tripped and ran orders/1") {
            let shard = second.shards.first { $0.topicPartition == poisoned }
            let tripped = shard.map { if case .tripped = $0.state { true } else { false } } ?? false
            return tripped
                && second.shards.first { $0.topicPartition == TopicPartition("orders", 1) }?.state == .running
        }
        #expect(calls.value[0] == nil, "the handler was not called for the tripped partition")
        #expect(
            second.shards.first { $0.topicPartition == poisoned }?.lastError
                == "handler failed at offset 3: cannot price it")
        fixed.withLock { $0 = true }
        // An operator resets it for the group: a command record, carried out by whichever host owns the shard.
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: configuration.controlTopic, logger: HostFixture.logger)
        try await writer.send(ControlCommand(action: .reset, topicPartition: poisoned, who: "test"))
        await writer.close()
        try await waitUntil("after the reset, orders/0 runs and the trip is cleared for the group") {
            second.shards.first { $0.topicPartition == poisoned }?.state == .running
                && second.control?.trip(for: poisoned) == nil
        }
        try await waitUntil("orders/0 committed to its end") {
            try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 2)[0] == 10
        }
        second.shutdown()
        try await secondRun.value
    }

    @Test("a rate flag on the control topic reaches the shards; unset lifts it")
    func rateFlagReachesShards() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let configuration = Self.configuration(cluster, group: HostFixture.uniqueGroup())
        try cluster.createTopic(configuration.controlTopic, partitions: 1)
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: configuration.controlTopic, logger: HostFixture.logger)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let run = Task { try await host.run() }
        defer { host.shutdown() }
        try await waitUntil("running") { host.shards.filter { $0.state == .running }.count == 2 }
        try await writer.setFlag(.topic("orders"), enabled: true, reason: "degrade", who: "test", rate: 50)
        try await waitUntil("both shards limited to 50/s, still running") {
            host.shards.allSatisfy { $0.flag.rate == 50 && $0.state == .running }
        }
        try await writer.setFlag(.topic("orders"), enabled: nil, reason: nil, who: "test")
        try await waitUntil("the limit lifted") { host.shards.allSatisfy { $0.flag.rate == nil } }
        await writer.close()
        host.shutdown()
        try await run.value
    }

    @Test("a bad control record is logged and skipped; the flag keeps its state")
    func badRecordKeepsState() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = Self.configuration(cluster, group: group)
        try cluster.createTopic(configuration.controlTopic, partitions: 1)
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: configuration.controlTopic, logger: HostFixture.logger)
        try await writer.setFlag(.topic("orders"), enabled: false, reason: nil, who: "test")
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        _ = try await producer.send(
            ProducerRecord(
                topic: configuration.controlTopic, partition: 0, key: Array("flag/orders".utf8),
                value: Array(#"{"v":7,"state":"on"}"#.utf8)))
        _ = try await producer.send(
            ProducerRecord(
                topic: configuration.controlTopic, partition: 0, key: Array("flag/orders".utf8),
                value: Array("garbage".utf8)))
        await producer.close()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let run = Task { try await host.run() }
        try await HostFixture.waitUntil("the shard is off", showing: ["host": host]) {
            host.shards.first?.state == .off
        }
        #expect((host.control?.appliedPosition ?? 0) >= 3, "all three records read")
        #expect(host.flags.setting(for: TopicPartition("orders", 0)).enabled == false)
        await writer.close()
        host.shutdown()
        try await run.value
    }

    @Test("a host whose control topic cannot be read does not start, and says why")
    func unreadableControlTopic() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        var configuration = Self.configuration(cluster, group: HostFixture.uniqueGroup())
        configuration.control.loadTimeout = .seconds(2)
        configuration.kafka.bootstrap = "127.0.0.1:1"  // nothing listens there
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let error = await #expect(throws: SluiceError.self) { try await host.run() }
        #expect(
            error?.message.hasPrefix("control topic '\(configuration.controlTopic)' could not be read: ") == true,
            "\(error?.message ?? "")")
        #expect(error?.message.hasSuffix("the host does not fetch without it") == true)
    }
}
