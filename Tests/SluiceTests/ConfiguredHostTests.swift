import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

/// Settings as a user gives them: a YAML file read by `SluiceConfiguration.load(file:)`, a running host against
/// the embedded cluster, and what the user then sees (handler calls, commits, shard states, dead letters). The
/// unit tests of the pipeline hand it its settings directly; these go through the path a user configures, where
/// `onCrash.then: deadLetter` once failed while every unit test passed.
@Suite("docs/configuration.md's settings through a loaded file and a running host", .timeLimit(.minutes(3)))
struct ConfiguredHostTests {
    /// Loads `topics` (and other sections) the way a service does, with the cluster's address and a new group.
    static func load(
        _ cluster: any TestKafkaCluster, group: String, kafka extra: String = "", host hostExtra: String = "",
        _ sections: String
    ) async throws -> SluiceConfiguration {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-configured-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("sluice.yaml").path
        let text = """
            kafka:
              bootstrap: \(cluster.bootstrapServers)
              group: \(group)
              sessionTimeout: 6s
              commitInterval: 100ms
            \(extra)
            host:
              stateDirectory: \(directory.path)/state
              \(hostExtra.isEmpty ? "shutdownTimeout: 10s" : hostExtra)
            admin:
              enabled: off

            """ + sections
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return try await SluiceConfiguration.load(file: path, environment: [:])
    }

    /// Produces `count` messages to `topic`'s partition 0, `poison` at `poisonAt`, `ok-N` elsewhere; keys `k0..k7`.
    static func produce(_ cluster: any TestKafkaCluster, topic: String = "orders", count: Int, poisonAt: Int? = nil)
        async throws
    {
        let values = (0..<count).map { $0 == poisonAt ? "poison" : "ok-\($0)" }
        try await cluster.produce(
            topic: topic, values: values, keys: (0..<8).map { "k\($0)" }, partition: 0, logger: HostFixture.logger)
    }

    static func run(_ host: SluiceHost) -> Task<Void, any Error> { Task { try await host.run() } }

    static func stop(_ host: SluiceHost, _ running: Task<Void, any Error>) async throws {
        host.shutdown()
        try await running.value
    }

    static func committed(_ cluster: any TestKafkaCluster, group: String) async throws -> Int64? {
        try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 1)[0]
    }

    @Test(
        "onFailure { retries, backoff, then: skip }: the failing message is tried retries + 1 times, skipped and committed past; the rest handled"
    )
    func onFailureSkip() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                onFailure: { retries: 2, backoff: 1ms..2ms, then: skip }
            """)
        #expect(configuration.topics["orders"]?.onFailure.retries == 2)
        try await Self.produce(cluster, count: 10, poisonAt: 3)
        let attempts = Locked(0)
        let handled = HandledMessages()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison") {
                    attempts.withLock { $0 += 1 }
                    throw TestFailure(description: "cannot parse")
                }
                handled.append(message)
            })
        let running = Self.run(host)
        try await waitUntil("the rest handled and the poison skipped") {
            handled.count == 9 && host.shards.first?.skipped == 1
        }
        try await waitUntil("committed past the poison") { try await Self.committed(cluster, group: group) == 10 }
        #expect(attempts.value == 3, "one call and two retries")
        try await Self.stop(host, running)
    }

    @Test(
        "onFailure then: deadLetter with deadLetterTopic: the failed message is in the dead-letter topic with its attempts, the offset moves on"
    )
    func onFailureDeadLetter() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1, "orders.dlq": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                onFailure: { retries: 1, backoff: 1ms..2ms, then: deadLetter }
                deadLetterTopic: orders.dlq
            """)
        try await Self.produce(cluster, count: 10, poisonAt: 6)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison") { throw TestFailure(description: "cannot parse") }
            })
        let running = Self.run(host)
        try await waitUntil("committed to the end") { try await Self.committed(cluster, group: group) == 10 }
        try await Self.stop(host, running)
        let letters = try await cluster.deadLetters(topic: "orders.dlq")
        #expect(letters.count == 1)
        #expect(letters.first?.text == "poison" && letters.first?.sourceOffset == 6 && letters.first?.attempts == 2)
        #expect(letters.first?.error == "cannot parse")
    }

    @Test(
        "onFailure then: stop (the default) with breaker: latched: the shard stops at the failing message, tripped, nothing past it committed"
    )
    func onFailureStopLatched() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                breaker: latched
            """)
        #expect(configuration.topics["orders"]?.onFailure.then == .stop)
        try await Self.produce(cluster, count: 10, poisonAt: 4)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison") { throw TestFailure(description: "cannot parse") }
            })
        let running = Self.run(host)
        try await waitUntil("tripped at the poison") {
            guard let shard = host.shards.first, case .tripped = shard.state else { return false }
            return shard.lastError?.contains("cannot parse") == true
        }
        try await waitUntil("committed up to the poison") { try await Self.committed(cluster, group: group) == 4 }
        try await Self.stop(host, running)
        #expect(try await Self.committed(cluster, group: group) == 4, "nothing past the poison")
    }

    @Test(
        "handlerTimeout: a handler call running longer crashes its shard (latched: it stays down); the message is not committed"
    )
    func handlerTimeout() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                handlerTimeout: 300ms
                breaker: latched
            """)
        try await Self.produce(cluster, count: 5, poisonAt: 2)
        let release = Locked(false)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                while message.value == KafkaBytes("poison"), !release.value {
                    try? await Task.sleep(for: .milliseconds(5))
                }
            })
        let running = Self.run(host)
        try await waitUntil("tripped by the timeout") {
            guard let shard = host.shards.first, case .tripped = shard.state else { return false }
            return shard.lastError?.contains("handler ran longer than") == true
        }
        release.withLock { $0 = true }
        try await Self.stop(host, running)
        #expect(try await Self.committed(cluster, group: group) == 2)
    }

    @Test(
        "ordering: key with processors: keys run in parallel, each key in order; ordering: partition: one call at a time, in offset order"
    )
    func orderingAndProcessors() async throws {
        for (ordering, processors) in [("key", 4), ("partition", 4), ("none", 4)] {
            let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
            let group = HostFixture.uniqueGroup()
            let configuration = try await Self.load(
                cluster, group: group,
                """
                topics:
                  orders:
                    ordering: \(ordering)
                    processors: \(processors)
                """)
            try await Self.produce(cluster, count: 200)
            let concurrent = Locked((now: 0, peak: 0))
            let perKey = Locked<[String: [Int64]]>([:])
            let order = Locked<[Int64]>([])
            let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
            host.register(
                "orders",
                ClosureHandler { message, _ in
                    concurrent.withLock {
                        $0.now += 1
                        $0.peak = max($0.peak, $0.now)
                    }
                    try await Task.sleep(for: .milliseconds(2))
                    perKey.withLock { $0[message.keyString!, default: []].append(message.offset) }
                    order.withLock { $0.append(message.offset) }
                    concurrent.withLock { $0.now -= 1 }
                })
            let running = Self.run(host)
            try await waitUntil("all 200 handled (\(ordering))") { order.value.count == 200 }
            try await Self.stop(host, running)
            let peak = concurrent.value.peak
            switch ordering {
            case "partition":
                #expect(peak == 1, "partition: one call at a time")
                #expect(order.value == Array(0..<200), "partition: offset order")
            case "key":
                #expect(peak > 1, "key: keys in parallel (peak \(peak))")
                #expect(perKey.value.values.allSatisfy { $0 == $0.sorted() }, "key: each key in order")
            default:
                #expect(peak > 1, "none: in parallel (peak \(peak))")
                #expect(Set(order.value) == Set(0..<200))
            }
        }
    }

    @Test("batch { size, timeout }: a BatchHandler gets full batches of size, and the partial rest after the timeout")
    func batches() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                batch: { size: 10, timeout: 50ms }
            """)
        try await Self.produce(cluster, count: 95)
        let sizes = Locked<[Int]>([])
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders", batchHandler: ClosureBatchHandler { batch, _ in sizes.withLock { $0.append(batch.count) } })
        let running = Self.run(host)
        try await waitUntil("all 95 handled") { sizes.value.reduce(0, +) == 95 }
        try await waitUntil("committed to the end") { try await Self.committed(cluster, group: group) == 95 }
        try await Self.stop(host, running)
        #expect(sizes.value.allSatisfy { $0 <= 10 }, "\(sizes.value)")
        #expect(sizes.value.contains(10), "full batches: \(sizes.value)")
    }

    @Test("maxInFlight: with the handler stuck, the shard takes exactly that many messages and no more")
    func maxInFlight() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                maxInFlight: 5
            """)
        #expect(configuration.topics["orders"]?.maxInFlight == 5)
        try await Self.produce(cluster, count: 100)
        let hang = HangingHandler()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", hang)
        let running = Self.run(host)
        var seen: [Int] = []
        try await waitUntil("five taken") {
            let inFlight = host.shards.first?.inFlight ?? 0
            seen.append(inFlight)
            return inFlight == 5
        }
        for _ in 0..<20 {
            seen.append(host.shards.first { $0.topicPartition == TopicPartition("orders", 0) }?.inFlight ?? 0)
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(seen.allSatisfy { $0 <= 5 }, "never more than maxInFlight: \(seen)")
        hang.release()
        try await waitUntil("committed to the end") { try await Self.committed(cluster, group: group) == 100 }
        try await Self.stop(host, running)
    }

    @Test("flags: default off keeps every shard off; a flag file turning one partition on runs only it")
    func flagsFromTheFile() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let group = HostFixture.uniqueGroup()
        let flagFile = FileManager.default.temporaryDirectory.appendingPathComponent("flags-\(UUID().uuidString).yaml")
            .path
        try "\"orders/1\": on\n".write(toFile: flagFile, atomically: true, encoding: .utf8)
        let configuration = try await Self.load(
            cluster, group: group,
            """
            flags:
              default: off
              file: \(flagFile)
              pollInterval: 50ms
            topics:
              orders: {}
            """)
        try await cluster.produce(
            topic: "orders", values: (0..<20).map { "ok-\($0)" }, partition: 0, logger: HostFixture.logger)
        try await cluster.produce(
            topic: "orders", values: (0..<20).map { "ok-\($0)" }, partition: 1, logger: HostFixture.logger)
        let handled = HandledMessages()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let running = Self.run(host)
        try await waitUntil("orders/1 handled") { handled.count == 20 }
        try await waitUntil("orders/0 off by default") {
            host.shards.first { $0.topicPartition == TopicPartition("orders", 0) }?.state == .off
        }
        #expect(handled.all.value.allSatisfy { $0.partition == 1 }, "only the partition the file turned on")
        try await Self.stop(host, running)
    }

    @Test(
        "breaker fields { restartBackoff, trip { crashes, within } }: a shard that keeps failing restarts, then trips at the second crash"
    )
    func breakerFields() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                breaker: { restartBackoff: 10ms..20ms, trip: { crashes: 2, within: 10m }, cooldown: never }
            """)
        try await Self.produce(cluster, count: 5, poisonAt: 1)
        let calls = Locked(0)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison") {
                    calls.withLock { $0 += 1 }
                    throw TestFailure(description: "cannot parse")
                }
            })
        let running = Self.run(host)
        try await waitUntil("tripped") {
            guard let shard = host.shards.first, case .tripped = shard.state else { return false }
            return true
        }
        #expect(calls.value == 2, "one call per start: the first crash restarted it, the second tripped it")
        try await Self.stop(host, running)
    }

    @Test(
        "breaker presets by name (fuse, standard; restartBackoff shortened): a shard that keeps failing trips at its fifth crash; backoff never trips",
        arguments: ["fuse", "standard", "backoff"])
    func breakerPresets(_ preset: String) async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                breaker: { preset: \(preset), restartBackoff: \(preset == "backoff" ? "100ms..200ms" : "10ms..20ms") }
            """)
        #expect(configuration.topics["orders"]?.breaker.trip == BreakerPolicy.presets[preset]?.trip)
        try await Self.produce(cluster, count: 5, poisonAt: 1)
        let calls = Locked(0)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison") {
                    calls.withLock { $0 += 1 }
                    throw TestFailure(description: "cannot parse")
                }
            })
        let running = Self.run(host)
        // The host is stopped however the waits end: a shard left crash-looping would load every later test
        // (each thrown error in a test process captures a backtrace). The backoff preset never trips, so its
        // restarts come every 100-200 ms, not the 10-20 ms that make the others trip at once.
        do {
            if preset == "backoff" {
                try await waitUntil("restarted past five crashes") { calls.value >= 8 }
                #expect(
                    host.shards.first.map { if case .tripped = $0.state { false } else { true } } == true,
                    "backoff never trips")
            } else {
                try await waitUntil("tripped") {
                    guard let shard = host.shards.first, case .tripped = shard.state else { return false }
                    return true
                }
                #expect(calls.value == 5, "\(preset): five crashes within its window trip the shard")
            }
        } catch {
            try await Self.stop(host, running)
            throw error
        }
        try await Self.stop(host, running)
    }

    @Test(
        "host.revokeTimeout: revoked shards whose calls hang keep their partitions until revokeTimeout of the host's clock, then the new member gets them"
    )
    func revokeTimeoutSetting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group, host: "revokeTimeout: 3s\n  drainTimeout: 10m\n  shutdownTimeout: 10s",
            """
            topics:
              orders: { handlerTimeout: 10m }
            """)
        #expect(configuration.revokeTimeout == .seconds(3))
        for partition in 0..<2 {
            try await cluster.produce(
                topic: "orders", values: (0..<5).map { "ok-\($0)" }, partition: Int32(partition),
                logger: HostFixture.logger)
        }
        let clock = ManualHostClock()
        let hang = HangingHandler()
        let first = SluiceHost(configuration: configuration, logger: HostFixture.logger, clock: clock)
        first.register("orders", hang)
        let firstRunning = Self.run(first)
        try await waitUntil("the first host's calls hang") { hang.started && first.shards.count == 2 }

        let handled = HandledMessages()
        let second = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        second.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let secondRunning = Self.run(second)
        try await waitUntil("a shard of the first host is revoked and drains (its call hangs)") {
            first.shards.contains { $0.state == .draining }
        }
        let revoked = first.shards.filter { $0.state == .draining }.map(\.topicPartition)
        // Short of the session timeout: a member that holds its revoked partitions longer is removed from the
        // group by the coordinator (the embedded cluster's rebalance timeout).
        try await clock.tick(first, by: .seconds(2))
        #expect(
            first.shards.filter { $0.state == .draining }.map(\.topicPartition) == revoked,
            "still held 2 s in: \(first.shards.map(\.state))")
        #expect(handled.distinct == 0, "nothing handed to the new member yet")
        try await clock.tick(first, by: .seconds(2))
        try await waitUntil("past revokeTimeout the partitions are released and the new member handles its share") {
            handled.distinct >= 5
        }
        #expect(
            Set(handled.all.value.map(\.partition)) == Set(revoked.map(\.partition)),
            "the new member handles what was revoked")
        #expect(!hang.released, "released while the first host's calls still hang")
        hang.release()
        try await Self.stop(second, secondRunning)
        try await Self.stop(first, firstRunning)
    }

    @Test("kafka.properties pass to librdkafka: auto.offset.reset latest skips what a new group finds already there")
    func kafkaProperties() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group, kafka: "  properties: { auto.offset.reset: latest }",
            """
            topics:
              orders: {}
            """)
        #expect(configuration.kafka.properties["auto.offset.reset"] == "latest")
        try await Self.produce(cluster, count: 10)
        let handled = HandledMessages()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let running = Self.run(host)
        // librdkafka resolves "latest" at the partition's first fetch: produce once the position is there.
        // librdkafka resolves "latest" when the group's join completes: keep producing until the host handles.
        try await waitUntil("messages produced after the start handled") {
            try await cluster.produce(topic: "orders", values: ["late"], partition: 0, logger: HostFixture.logger)
            return handled.count > 0
        }
        #expect(
            handled.all.value.allSatisfy { $0.offset >= 10 && $0.value == KafkaBytes("late") },
            "the ten there before were skipped")
        try await Self.stop(host, running)
    }

    @Test("control { enabled, topic }: the host reads the named control topic; a flag written there stops the topic")
    func controlTopicFromTheFile() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1, "ops.control": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            control:
              enabled: true
              topic: ops.control
            topics:
              orders: {}
            """)
        #expect(configuration.controlTopic == "ops.control")
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: "ops.control", logger: HostFixture.logger)
        let handled = HandledMessages()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let running = Self.run(host)
        try await Self.produce(cluster, count: 5)
        try await waitUntil("handled while on") { handled.count == 5 }
        _ = try await writer.setFlag(.topic("orders"), enabled: false, reason: "incident", who: "test")
        try await waitUntil("off through the named control topic") {
            host.shards.first.map { $0.state == .off && $0.flag.source == "control" } == true
        }
        try await Self.produce(cluster, count: 5)
        try await Task.sleep(for: .milliseconds(300))
        #expect(handled.count == 5, "nothing handled while off")
        await writer.close()
        try await Self.stop(host, running)
    }

    @Test(
        "host { stateDirectory, crashJournal }: the journal is kept in the named directory, and not at all with crashJournal off"
    )
    func crashJournalSetting() async throws {
        for enabled in [true, false] {
            let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
            let group = HostFixture.uniqueGroup()
            let state = FileManager.default.temporaryDirectory.appendingPathComponent(
                "sluice-journal-\(UUID().uuidString)"
            ).path
            // A file of its own: the helper's host section names a directory already.
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-\(UUID().uuidString).yaml")
                .path
            try """
            kafka: { bootstrap: "\(cluster.bootstrapServers)", group: \(group), sessionTimeout: 6s }
            host: { stateDirectory: \(state), crashJournal: \(enabled ? "on" : "off"), shutdownTimeout: 10s }
            admin: { enabled: off }
            topics: { orders: {} }
            """.write(toFile: path, atomically: true, encoding: .utf8)
            let configuration = try await SluiceConfiguration.load(file: path, environment: [:])
            #expect(configuration.stateDirectory == state && configuration.crashJournal == enabled)
            let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
            host.register("orders", ClosureHandler { _, _ in })
            let running = Self.run(host)
            try await waitUntil("running") { host.shards.first?.state == .running }
            let journal = FileManager.default.fileExists(atPath: "\(state)/crash-journal-0.bin")
            #expect(journal == enabled, "crashJournal \(enabled): journal file \(journal ? "present" : "absent")")
            try await Self.stop(host, running)
        }
    }

    @Test(
        "host.handlerThreads: handler code runs on that many of Sluice's handler threads, however many lanes there are")
    func handlerThreads() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group, host: "handlerThreads: 3\n  shutdownTimeout: 10s",
            """
            topics:
              orders:
                ordering: key
                processors: 8
            """)
        #expect(configuration.handlerThreads == 3)
        try await Self.produce(cluster, count: 400)
        let threads = Locked<Set<String>>([])
        let handled = Locked(0)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { _, _ in
                threads.withLock { _ = $0.insert(RuntimeTests.threadName()) }
                try await Task.sleep(for: .milliseconds(1))
                threads.withLock { _ = $0.insert(RuntimeTests.threadName()) }
                handled.withLock { $0 += 1 }
            })
        let running = Self.run(host)
        try await waitUntil("all handled") { handled.value == 400 }
        try await Self.stop(host, running)
        #expect(threads.value.allSatisfy { $0.hasPrefix("sluice-handler") }, "\(threads.value)")
        #expect(threads.value.count <= 3, "at most handlerThreads threads: \(threads.value.sorted())")
    }

    @Test(
        "host.drainTimeout: a flag turned off while a handler call hangs stops the shard after drainTimeout, not when the call ends"
    )
    func drainTimeoutSetting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let flagFile = FileManager.default.temporaryDirectory.appendingPathComponent("flags-\(UUID().uuidString).yaml")
            .path
        try "{}\n".write(toFile: flagFile, atomically: true, encoding: .utf8)
        let configuration = try await Self.load(
            cluster, group: group, host: "drainTimeout: 200ms\n  shutdownTimeout: 10s",
            """
            flags: { file: \(flagFile), pollInterval: 50ms }
            topics:
              orders: { handlerTimeout: 10m }
            """)
        #expect(configuration.drainTimeout == .milliseconds(200))
        try await Self.produce(cluster, count: 3)
        let hang = HangingHandler()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", hang)
        let running = Self.run(host)
        try await waitUntil("a call hangs") { hang.started }
        try "orders: off\n".write(toFile: flagFile, atomically: true, encoding: .utf8)
        try await waitUntil("off while the call still hangs") { host.shards.first?.state == .off }
        #expect(!hang.released)
        hang.release()
        try await Self.stop(host, running)
    }

    @Test("host.shutdownTimeout: a shutdown with a handler call that hangs returns after shutdownTimeout")
    func shutdownTimeoutSetting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group, host: "shutdownTimeout: 300ms\n  drainTimeout: 10m",
            """
            topics:
              orders: { handlerTimeout: 10m }
            """)
        #expect(configuration.shutdownTimeout == .milliseconds(300))
        try await Self.produce(cluster, count: 3)
        let hang = HangingHandler()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", hang)
        let running = Self.run(host)
        try await waitUntil("a call hangs") { hang.started }
        host.shutdown()
        try await running.value
        #expect(!hang.released, "the host stopped while the call still hung")
        hang.release()
        #expect(try await Self.committed(cluster, group: group) ?? 0 == 0, "the hanging message is not committed")
    }

    @Test("host.stallAfter: a running shard with messages waiting and no progress for stallAfter is reported stalled")
    func stallAfterSetting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group, host: "stallAfter: 1s\n  shutdownTimeout: 10s",
            """
            topics:
              orders: { handlerTimeout: 10m }
            """)
        #expect(configuration.stallAfter == .seconds(1))
        try await Self.produce(cluster, count: 5)
        let hang = HangingHandler()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", hang)
        let running = Self.run(host)
        try await waitUntil("reported stalled") { host.shards.first?.stalledSince != nil }
        hang.release()
        try await waitUntil("progress clears it") { host.shards.first?.stalledSince == nil }
        try await Self.stop(host, running)
    }

    @Test(
        "host.lagRefreshInterval: a shard whose flag is off (paused, fetching nothing) still sees its high watermark follow new messages"
    )
    func lagRefreshIntervalSetting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group, host: "lagRefreshInterval: 200ms\n  shutdownTimeout: 10s",
            """
            flags: { default: off }
            topics:
              orders: {}
            """)
        #expect(configuration.lagRefreshInterval == .milliseconds(200))
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let running = Self.run(host)
        try await waitUntil("off") { host.shards.first?.state == .off }
        try await Self.produce(cluster, count: 7)
        try await waitUntil("the paused shard's high watermark follows") { host.shards.first?.highWatermark == 7 }
        try await Self.stop(host, running)
    }

    @Test(
        "topics.maxAbandonedCalls: 0 trips a shard at its first handler call abandoned past handlerTimeout, whatever the breaker says"
    )
    func maxAbandonedCallsSetting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                handlerTimeout: 200ms
                maxAbandonedCalls: 0
                abandonTimeout: 1s
                breaker: { restartBackoff: 10ms..20ms, trip: never }
            """)
        #expect(
            configuration.topics["orders"]?.maxAbandonedCalls == 0
                && configuration.topics["orders"]?.abandonTimeout == .seconds(1))
        try await Self.produce(cluster, count: 3)
        let hang = HangingHandler()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", hang)
        let running = Self.run(host)
        try await waitUntil("tripped by the abandoned call") {
            guard let shard = host.shards.first, case .tripped = shard.state else { return false }
            return shard.lastError?.contains("maxAbandonedCalls 0") == true
        }
        hang.release()
        try await Self.stop(host, running)
    }

    @Test("breaker cooldown: a tripped shard is probed after the cooldown, and a probe that succeeds runs it again")
    func breakerCooldown() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                breaker: { restartBackoff: 10ms..20ms, trip: { crashes: 1 }, cooldown: 10s }
            """)
        try await Self.produce(cluster, count: 5, poisonAt: 2)
        let failedOnce = Locked(false)
        let handled = HandledMessages()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison"), !failedOnce.value {
                    failedOnce.withLock { $0 = true }
                    throw TestFailure(description: "downstream unavailable")
                }
                handled.append(message)
            })
        let running = Self.run(host)
        // Tripped for the 10 s cooldown: long enough that no poll of a loaded machine misses it.
        try await waitUntil("tripped at the first crash") {
            guard let shard = host.shards.first, case .tripped = shard.state else { return false }
            return true
        }
        #expect(handled.distinct == 2, "held at the failing message while tripped")
        try await waitUntil("every message handled after the probe") { handled.distinct == 5 }
        #expect(failedOnce.value)
        try await waitUntil("running again") { host.shards.first?.state == .running }
        try await Self.stop(host, running)
    }

    @Test(
        "kafka.producerProperties reach the dead-letter producer: message.max.bytes below a message's size fails its dead-letter write"
    )
    func producerProperties() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1, "orders.dlq": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group, kafka: "  producerProperties: { message.max.bytes: \"1000\" }",
            """
            topics:
              orders:
                onFailure: { then: deadLetter }
                deadLetterTopic: orders.dlq
                breaker: latched
            """)
        #expect(configuration.kafka.producerProperties["message.max.bytes"] == "1000")
        try await cluster.produce(
            topic: "orders", values: [String(repeating: "x", count: 2_000)], partition: 0, logger: HostFixture.logger)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in throw TestFailure(description: "refused") })
        let running = Self.run(host)
        try await waitUntil("the dead-letter write refused by the producer's limit") {
            guard let shard = host.shards.first, case .tripped = shard.state else { return false }
            return shard.lastError?.contains("dead-letter write failed") == true
        }
        try await Self.stop(host, running)
    }

    @Test("breaker healthyAfter: a restarted shard that runs that long without a crash has its attempt count reset")
    func healthyAfterSetting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            topics:
              orders:
                breaker: { preset: backoff, restartBackoff: 10ms..20ms, healthyAfter: 2s }
            """)
        #expect(configuration.topics["orders"]?.breaker.healthyAfter == .seconds(2))
        try await Self.produce(cluster, count: 3, poisonAt: 1)
        let failedOnce = Locked(false)
        let handled = HandledMessages()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison"), !failedOnce.value {
                    failedOnce.withLock { $0 = true }
                    throw TestFailure(description: "once")
                }
                handled.append(message)
            })
        let running = Self.run(host)
        // The poison is handled only by the pipeline started after the crash: the shard restarted (attempt 1).
        try await waitUntil("restarted after the crash, every message handled") {
            failedOnce.value && handled.distinct == 3
        }
        // Not sampled while it lasts (a loaded machine can miss a 2 s window): its end is what healthyAfter promises.
        try await waitUntil("healthy again: attempt 0") {
            host.shards.first.map { $0.state == .running && $0.attempt == 0 } == true
        }
        try await Self.stop(host, running)
    }

    @Test(
        "host { blockedThreadAfter, maxHandlerThreads }: a handler holding its thread that long counts as blocking, and another thread takes its place"
    )
    func blockedThreadSettings() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            host: "handlerThreads: 2\n  maxHandlerThreads: 4\n  blockedThreadAfter: 200ms\n  shutdownTimeout: 10s",
            """
            topics:
              orders: { handlerTimeout: 10m }
            """)
        #expect(configuration.maxHandlerThreads == 4 && configuration.blockedThreadAfter == .milliseconds(200))
        try await cluster.produce(topic: "orders", values: ["block"], partition: 0, logger: HostFixture.logger)
        let release = Locked(false)
        let handledOther = Locked(0)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("block") {
                    while !release.value { usleep(5_000) }  // holds its thread, never suspends
                } else {
                    handledOther.withLock { $0 += 1 }
                }
            })
        let running = Self.run(host)
        try await waitUntil("counted as blocking") { host.blockedHandlerThreads == 1 }
        try await cluster.produce(
            topic: "orders", values: (0..<20).map { "ok-\($0)" }, partition: 1, logger: HostFixture.logger)
        try await waitUntil("the other partition handled meanwhile") { handledOther.value == 20 }
        release.withLock { $0 = true }
        try await waitUntil("no longer blocking") { host.blockedHandlerThreads == 0 }
        try await Self.stop(host, running)
    }

    @Test("control.loadTimeout: a host that cannot read its control topic within it does not start, and says why")
    func controlLoadTimeoutSetting() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-load-timeout-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("sluice.yaml").path
        try """
        kafka: { bootstrap: "127.0.0.1:1", group: load-timeout, sessionTimeout: 6s }
        host: { stateDirectory: \(directory.path)/state }
        control: { enabled: true, loadTimeout: 1s }
        topics: { orders: {} }
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let configuration = try await SluiceConfiguration.load(file: path, environment: [:])
        #expect(configuration.control.loadTimeout == .seconds(1))
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let error = await #expect(throws: SluiceError.self) { try await host.run() }
        #expect(error?.message.hasSuffix("the host does not fetch without it") == true, "\(error?.message ?? "")")
    }
}

extension ConfiguredHostTests {
    @Test(
        "host.memoryBudget bounds messages in flight by bytes: with 200 KiB messages and a hung handler, far fewer than maxInFlight are taken"
    )
    func memoryBudgetSetting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group, host: "memoryBudget: 16MiB\n  shutdownTimeout: 10s",
            """
            topics:
              orders: { maxInFlight: 1000, handlerTimeout: 10m }
            """)
        #expect(configuration.memoryBudget == 16 << 20)
        // 4 MB in one partition (the mock keeps 5 MiB a partition).
        try await cluster.produce(
            topic: "orders", values: (0..<20).map { _ in String(repeating: "x", count: 200 << 10) }, partition: 0,
            logger: HostFixture.logger)
        let hang = HangingHandler()
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", hang)
        let running = Self.run(host)
        try await waitUntil("a call hangs") { hang.started }
        var seen: [Int] = []
        for _ in 0..<30 {
            seen.append(host.shards.first { $0.topicPartition == TopicPartition("orders", 0) }?.inFlight ?? 0)
            try await Task.sleep(for: .milliseconds(10))
        }
        // A quarter of the budget for messages in flight, 4 MiB, split over the host's 4 partitions: 1 MiB, five
        // messages of 200 KiB (one more while the average size is learned).
        #expect(
            seen.allSatisfy { $0 <= 6 } && seen.contains { $0 > 0 },
            "in flight bounded by the byte budget, not maxInFlight 1000: \(seen)")
        hang.release()
        try await waitUntil("committed to the end") { try await Self.committed(cluster, group: group) == 20 }
        try await Self.stop(host, running)
    }
}

extension ConfiguredHostTests {
    @Test(
        "control { createTopics, replicationFactor } from the file: a starting host creates the control and audit topics, one partition each (on tansu; the mock has no CreateTopics and auto-creates them)"
    )
    func controlCreateTopicsSetting() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 1])
        let group = HostFixture.uniqueGroup()
        let configuration = try await Self.load(
            cluster, group: group,
            """
            control: { enabled: true, createTopics: on, replicationFactor: 1 }
            topics:
              orders: {}
            """)
        #expect(configuration.control.createTopics && configuration.control.replicationFactor == 1)
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let running = Self.run(host)
        try await waitUntil("running", timeout: .seconds(90)) { host.shards.first?.state == .running }
        for topic in [
            configuration.controlTopic, ControlPlaneWriter.auditTopic(forControl: configuration.controlTopic),
        ] {
            let found = try await KafkaTopicAdmin.ensure(
                .init(name: topic, partitions: 1, replicationFactor: 1), bootstrapServers: cluster.bootstrapServers,
                timeout: .seconds(30))
            if cluster is EmbeddedKafkaCluster {
                // Auto-created by the host's first read or write, with the mock's default partition count.
                guard case .existed = found else {
                    Issue.record("\(topic) exists once a host ran: \(found)")
                    continue
                }
            } else {
                #expect(found == .existed(partitions: 1), "\(topic) created by the host: \(found)")
            }
        }
        try await Self.stop(host, running)
    }
}

/// A handler whose every call hangs (suspended, not holding its thread) until ``release()``.
final class HangingHandler: MessageHandler {
    private let state = Locked((started: false, released: false))
    /// Whether a call started.
    var started: Bool { state.value.started }
    /// Whether the calls were let go.
    var released: Bool { state.value.released }
    func release() { state.withLock { $0.released = true } }

    func handle(_ message: Message, context: ShardContext) async throws {
        state.withLock { $0.started = true }
        while !released { try? await Task.sleep(for: .milliseconds(5)) }
    }
}
