import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

/// Collects a host's shard events.
final class EventLog: Sendable {
    let events = Locked<[ShardEvent]>([])
    private let task: Locked<Task<Void, Never>?> = Locked(nil)

    init(_ host: SluiceHost) {
        let stream = host.events()
        let events = self.events
        task.withLock { $0 = Task { for await event in stream { events.withLock { $0.append(event) } } } }
    }

    func of(_ topicPartition: TopicPartition) -> [ShardEvent.Kind] {
        events.value.filter { $0.topicPartition == topicPartition }.map(\.kind)
    }
}

extension ShardEvent.Kind {
    var name: String {
        switch self {
        case .started(_, let probe): probe ? "probe" : "started"
        case .stopped(let reason): "stopped(\(reason.rawValue))"
        case .crashed: "crashed"
        case .backingOff: "backingOff"
        case .tripped: "tripped"
        case .reset: "reset"
        case .healthy: "healthy"
        case .flagChanged(let enabled, _, _): enabled ? "flag(on)" : "flag(off)"
        case .stalled: "stalled"
        case .stallCleared: "stallCleared"
        }
    }
}

@Suite("Supervisor: breaker and flags against the embedded cluster", .timeLimit(.minutes(2)))
struct SupervisorTests {
    func flagFile(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("flags-\(UUID().uuidString).yaml").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func configuration(
        _ cluster: any TestKafkaCluster, group: String, topics: [String: TopicConfiguration], flagFile: String? = nil,
        pollInterval: Duration = .milliseconds(200)
    ) -> SluiceConfiguration {
        var configuration = HostFixture.configuration(cluster, group: group, topics: topics)
        configuration.flags.file = flagFile
        configuration.flags.pollInterval = pollInterval
        return configuration
    }

    @Test("orders: off stops every orders shard and commits; payments keeps going; on resumes, nothing lost")
    func topicFlagOffAndOn() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4, "payments": 2])
        let flags = try flagFile("{}")
        let group = HostFixture.uniqueGroup()
        let host = SluiceHost(
            configuration: configuration(
                cluster, group: group, topics: ["orders": TopicConfiguration(), "payments": TopicConfiguration()],
                flagFile: flags, pollInterval: .seconds(1)),
            logger: HostFixture.logger)
        let orders = HandledMessages()
        let payments = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in orders.append(message) })
        host.register("payments", ClosureHandler { message, _ in payments.append(message) })
        let running = Task { try await host.run() }
        try await HostFixture.produce(cluster, topic: "orders", count: 400, keys: 40)
        try await waitUntil("orders handled") { orders.count == 400 }

        try "orders: off\n".write(toFile: flags, atomically: true, encoding: .utf8)
        // How fast is measured by `sluice bench` (flag-off reaction), not here: a loaded machine is slow.
        try await waitUntil("every orders shard off") {
            host.shards.filter { $0.topicPartition.topic == "orders" }.allSatisfy { $0.state == .off }
        }
        let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 4)
        #expect(committed.values.reduce(0, +) == 400, "drained shards committed everything they handled")

        try await HostFixture.produce(cluster, topic: "orders", count: 200, keys: 40)
        try await HostFixture.produce(cluster, topic: "payments", count: 200, keys: 20)
        try await waitUntil("payments keep consuming") { payments.count == 200 }
        #expect(orders.count == 400, "orders stay stopped")
        for shard in host.shards where shard.topicPartition.topic == "orders" {
            #expect(shard.pauseReasons == [.flag])
        }

        try "orders: on\n".write(toFile: flags, atomically: true, encoding: .utf8)
        try await waitUntil("orders resume where they left off") { orders.distinct == 600 }
        #expect(orders.count == 600, "nothing handled twice, nothing lost")
        host.shutdown()
        try await running.value
    }

    @Test("orders/3: off stops only that partition; back on resumes with nothing lost")
    func partitionFlag() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4])
        let flags = try flagFile("\"orders/3\": off\n")
        let host = SluiceHost(
            configuration: configuration(
                cluster, group: HostFixture.uniqueGroup(), topics: ["orders": TopicConfiguration()], flagFile: flags),
            logger: HostFixture.logger)
        let handled = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let running = Task { try await host.run() }
        try await waitUntil("four shards") { host.shards.count == 4 }
        #expect(host.shards.first { $0.topicPartition.partition == 3 }?.state == .off, "off from assignment")
        try await HostFixture.produce(cluster, topic: "orders", count: 800, keys: 80)
        let ends = try await HostFixture.endOffsets(cluster, topic: "orders", partitions: 4)
        let others = Int(ends[0]! + ends[1]! + ends[2]!)
        try await waitUntil("partitions 0-2 handled") { handled.count == others }
        try await Task.sleep(for: .milliseconds(500))
        #expect(handled.all.value.allSatisfy { $0.partition != 3 })

        try "\"orders/3\": on\n".write(toFile: flags, atomically: true, encoding: .utf8)
        try await waitUntil("partition 3 caught up") { handled.distinct == 800 }
        #expect(handled.count == 800)
        host.shutdown()
        try await running.value
    }

    @Test("a handler failing on one key crash-loops only its shard, backs off, then trips; the others finish")
    func crashLoopThenTrip() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4])
        try await HostFixture.produce(cluster, topic: "orders", count: 400, keys: 40)
        var settings = TopicConfiguration()
        settings.breaker = BreakerPolicy(
            restartBackoff: .init(initial: .milliseconds(100), maximum: .milliseconds(200), jitter: 0),
            trip: .init(crashes: 3, within: .seconds(60)), cooldown: nil, healthyAfter: .seconds(60))
        let group = HostFixture.uniqueGroup()
        let host = SluiceHost(
            configuration: configuration(cluster, group: group, topics: ["orders": settings]),
            logger: HostFixture.logger)
        let log = EventLog(host)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.keyString == "k7" { throw TestFailure(description: "cannot price k7") }
                handled.append(message)
            })
        let running = Task { try await host.run() }
        // Events reach the log asynchronously: wait for the trip there too.
        try await waitUntil("the k7 shard tripped") {
            host.shards.contains { if case .tripped = $0.state { true } else { false } }
                && log.events.value.contains { if case .tripped = $0.kind { true } else { false } }
        }
        let poisoned = try #require(
            host.shards.first { if case .tripped = $0.state { true } else { false } }?.topicPartition)
        #expect(
            log.of(poisoned).map(\.name) == [
                "started", "crashed", "backingOff", "started", "crashed", "backingOff", "started", "crashed", "tripped",
            ])
        let ends = try await HostFixture.endOffsets(cluster, topic: "orders", partitions: 4)
        try await waitUntil("every other shard reached its end offset") {
            let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 4)
            return (0..<4).filter { $0 != poisoned.partition }.allSatisfy { committed[$0] == ends[$0] }
        }
        for partition in Int32(0)..<4 where partition != poisoned.partition {
            #expect(
                log.of(TopicPartition("orders", partition)).map(\.name) == ["started"],
                "partition \(partition) untouched")
        }
        let firstPoison = handled.all.value.filter { $0.partition == poisoned.partition }.count
        let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 4)
        #expect(committed[poisoned.partition] == Int64(firstPoison), "nothing past the failing message committed")
        host.shutdown()
        try await running.value
    }

    @Test("latched: a tripped shard returns only after a flag cycle or an operator reset, from the failed message")
    func latchedNeedsCycleOrReset() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        var settings = TopicConfiguration()
        settings.breaker = .latched
        let host = SluiceHost(
            configuration: configuration(cluster, group: HostFixture.uniqueGroup(), topics: ["orders": settings]),
            logger: HostFixture.logger)
        let broken = Locked(true)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison"), broken.value { throw TestFailure(description: "poison") }
                handled.append(message)
            })
        let running = Task { try await host.run() }
        let partition = TopicPartition("orders", 0)
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for value in ["a", "poison", "b"] {
            _ = try await producer.send(ProducerRecord(topic: "orders", value: Array(value.utf8)))
        }
        let isTripped = { host.shards.first.map { if case .tripped = $0.state { true } else { false } } ?? false }
        try await waitUntil("tripped") { isTripped() }
        broken.withLock { $0 = false }
        try await Task.sleep(for: .seconds(2))
        #expect(isTripped(), "no automatic recovery")
        #expect(handled.count == 1)

        // A flag cycle: off, then on.
        host.operatorFlags.set(.partition(partition), enabled: false, reason: "incident")
        try await waitUntil("off") { host.shards.first?.state == .off }
        host.operatorFlags.unset(.partition(partition))
        try await waitUntil("the failed message is delivered again") { handled.count == 3 }
        #expect(handled.all.value.map(\.offset) == [0, 1, 2])

        broken.withLock { $0 = true }
        _ = try await producer.send(ProducerRecord(topic: "orders", value: Array("poison".utf8)))
        try await waitUntil("tripped again") { isTripped() }
        broken.withLock { $0 = false }
        #expect(await host.reset(partition))
        try await waitUntil("running after the reset") { handled.count == 4 }
        #expect(await host.reset(TopicPartition("orders", 9)) == false, "no such shard")
        await producer.close()
        host.shutdown()
        try await running.value
    }

    @Test("cooldown: a half-open probe after the cooldown; a crash in it trips again with the cooldown doubled")
    func cooldownProbe() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        var settings = TopicConfiguration()
        settings.breaker = BreakerPolicy(
            restartBackoff: .init(initial: .milliseconds(50), maximum: .milliseconds(50), jitter: 0),
            trip: .init(crashes: 1, within: nil), cooldown: .milliseconds(600), healthyAfter: .seconds(60))
        let host = SluiceHost(
            configuration: configuration(cluster, group: HostFixture.uniqueGroup(), topics: ["orders": settings]),
            logger: HostFixture.logger)
        let log = EventLog(host)
        let failures = Locked(0)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if failures.withLock({
                    $0 += 1
                    return $0
                }) <= 2 {
                    throw TestFailure(description: "downstream unavailable")
                }
                handled.append(message)
            })
        let running = Task { try await host.run() }
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        _ = try await producer.send(ProducerRecord(topic: "orders", value: Array("order".utf8)))
        await producer.close()
        let partition = TopicPartition("orders", 0)
        // Events reach the log asynchronously: wait for the last one there too.
        try await waitUntil("handled after two probes") { handled.count == 1 && log.of(partition).count >= 7 }
        #expect(
            log.of(partition).map(\.name) == ["started", "crashed", "tripped", "probe", "crashed", "tripped", "probe"])
        let trips = log.events.value.filter { if case .tripped = $0.kind { true } else { false } }
        #expect(trips.count == 2)
        host.shutdown()
        try await running.value
    }

    @Test("a malformed flag file changes nothing and is counted")
    func malformedFlagFile() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let flags = try flagFile("orders: on\n")
        let host = SluiceHost(
            configuration: configuration(
                cluster, group: HostFixture.uniqueGroup(), topics: ["orders": TopicConfiguration()], flagFile: flags),
            logger: HostFixture.logger)
        let handled = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let running = Task { try await host.run() }
        try await waitUntil("two shards running") { host.shards.filter { $0.state == .running }.count == 2 }
        try "orders: [off\n".write(toFile: flags, atomically: true, encoding: .utf8)
        try await waitUntil("the bad file was read") { (host.flags.failureCounts["file"] ?? 0) >= 1 }
        try await HostFixture.produce(cluster, topic: "orders", count: 100, keys: 10)
        try await waitUntil("still consuming") { handled.count == 100 }
        #expect(host.shards.allSatisfy { $0.state == .running && $0.flag.enabled })
        #expect(host.flags.lastErrors["file"]?.contains("not valid YAML or JSON") == true)
        host.shutdown()
        try await running.value
    }

    @Test("a partition flagged off stays paused when a rebalance moves it to another host")
    func flagSurvivesRebalance() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let flags = try flagFile("\"orders/1\": off\n")
        let group = HostFixture.uniqueGroup()
        var settings = configuration(cluster, group: group, topics: ["orders": TopicConfiguration()], flagFile: flags)
        settings.kafka.commitInterval = .seconds(30)
        let handled = HandledMessages()
        let hostA = SluiceHost(configuration: settings, logger: HostFixture.logger)
        hostA.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let runA = Task { try await hostA.run() }
        try await waitUntil("A has both partitions") { hostA.shards.count == 2 }
        let hostB = SluiceHost(configuration: settings, logger: HostFixture.logger)
        hostB.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let runB = Task { try await hostB.run() }
        try await waitUntil("one partition each", timeout: .seconds(40)) {
            hostA.shards.count == 1 && hostB.shards.count == 1
        }
        let owner = [hostA, hostB].first { $0.shards.first?.topicPartition.partition == 1 }!
        #expect(owner.shards.first?.state == .off)
        #expect(owner.shards.first?.pauseReasons == [.flag])
        try await HostFixture.produce(cluster, topic: "orders", count: 200, keys: 20)
        let ends = try await HostFixture.endOffsets(cluster, topic: "orders", partitions: 2)
        try await waitUntil("partition 0 handled") { handled.count == Int(ends[0]!) }
        try await Task.sleep(for: .milliseconds(500))
        #expect(handled.all.value.allSatisfy { $0.partition == 0 }, "nothing of the flagged partition was handled")
        hostA.shutdown()
        hostB.shutdown()
        try await runA.value
        try await runB.value
    }

    @Test(
        "a running shard that makes no progress with messages waiting is reported stalled, idle shards are not; progress clears it"
    )
    func stallDetection() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        var orders = TopicConfiguration()
        orders.handlerTimeout = .seconds(600)  // the watchdog does not end this hang
        var configuration = configuration(cluster, group: HostFixture.uniqueGroup(), topics: ["orders": orders])
        configuration.stallAfter = .seconds(1)
        configuration.lagRefreshInterval = .milliseconds(200)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        let release = Locked(false)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                // Partition 0's first message hangs until released.
                while message.partition == 0, message.offset == 0, !release.value {
                    try await Task.sleep(for: .milliseconds(5))
                }
                handled.append(message)
            })
        let events = EventLog(host)
        let running = Task { try await host.run() }
        try await waitUntil("both shards running") { host.shards.filter { $0.state == .running }.count == 2 }
        try await HostFixture.produce(cluster, topic: "orders", count: 40, keys: 40)
        let stuck = TopicPartition("orders", 0)
        let idle = TopicPartition("orders", 1)
        let ends = try await HostFixture.endOffsets(cluster, topic: "orders", partitions: 2)
        try #require(ends[0]! > 0 && ends[1]! > 0, "both partitions got messages: \(ends)")
        try await waitUntil("partition 1 handled all its messages") {
            handled.all.value.filter { $0.partition == 1 }.count == Int(ends[1]!)
        }
        try await waitUntil("partition 0 reported stalled") { events.of(stuck).map(\.name).contains("stalled") }
        let status = try #require(host.shards.first { $0.topicPartition == stuck })
        #expect(status.stalledSince != nil)
        #expect(status.lag == ends[0], "nothing done on partition 0: its whole backlog is lag")
        #expect((status.lagSeconds ?? 0) > 0, "the oldest waiting message has an age")
        #expect(host.shards.first { $0.topicPartition == idle }?.stalledSince == nil, "caught up is idle, not stalled")
        try await waitUntil("the idle shard's lag is 0 s once its last offset is stored") {
            host.shards.first { $0.topicPartition == idle }?.lagSeconds == 0
        }
        #expect(!events.of(idle).map(\.name).contains("stalled"))
        release.withLock { $0 = true }
        try await waitUntil("progress clears the stall") { events.of(stuck).map(\.name).contains("stallCleared") }
        try await waitUntil("partition 0 done") {
            handled.all.value.filter { $0.partition == 0 }.count == Int(ends[0]!)
        }
        host.shutdown()
        try await running.value
    }

    @Test(
        "lag of a paused shard follows new messages (queried watermarks), and is known before the shard stored anything"
    )
    func lagOfPausedShards() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let flags = try flagFile("orders: off\n")
        let group = HostFixture.uniqueGroup()
        try await HostFixture.produce(cluster, topic: "orders", count: 30, keys: 3)
        var configuration = configuration(
            cluster, group: group, topics: ["orders": TopicConfiguration()], flagFile: flags)
        configuration.lagRefreshInterval = .milliseconds(200)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let running = Task { try await host.run() }
        try await waitUntil("the shard is off") { host.shards.first?.state == .off }
        // Never fetched, nothing stored: the lag comes from the committed offset (none: the log start) and
        // the queried high watermark, never from a default of 0.
        try await waitUntil("lag is the 30 waiting messages") { host.shards.first?.lag == 30 }
        try await HostFixture.produce(cluster, topic: "orders", count: 20, keys: 3)
        try await waitUntil("lag follows while paused") { host.shards.first?.lag == 50 }
        #expect(host.shards.first?.pauseReasons == [.flag])
        host.shutdown()
        try await running.value
    }
}
