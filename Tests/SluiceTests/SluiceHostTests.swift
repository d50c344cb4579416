import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

@Suite("SluiceHost against the embedded cluster", .timeLimit(.minutes(2)))
struct SluiceHostTests {
    @Test("every message over every partition is handled and committed to the end offsets")
    func handlesAndCommitsEverything() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4])
        try await HostFixture.produce(cluster, topic: "orders", count: 2_000, keys: 50)
        let group = HostFixture.uniqueGroup()
        let host = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": TopicConfiguration()]),
            logger: HostFixture.logger)
        let handled = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let running = Task { try await host.run() }
        try await waitUntil("2,000 handled") { handled.count == 2_000 }
        host.shutdown()
        try await running.value
        #expect(handled.distinct == 2_000)
        let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 4)
        let ends = try await HostFixture.endOffsets(cluster, topic: "orders", partitions: 4)
        #expect(committed == ends)
    }

    @Test("ordering: key keeps each key's order with 8 processors")
    func keyOrdering() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        try await HostFixture.produce(cluster, topic: "orders", count: 3_000, keys: 60)
        var settings = TopicConfiguration()
        settings.ordering = .key
        settings.processors = 8
        let host = SluiceHost(
            configuration: HostFixture.configuration(
                cluster, group: HostFixture.uniqueGroup(), topics: ["orders": settings]), logger: HostFixture.logger)
        let perKey = Locked<[String: [Int]]>([:])
        let active = Locked((now: 0, peak: 0))
        host.register(
            "orders",
            ClosureHandler { message, _ in
                active.withLock {
                    $0.now += 1
                    $0.peak = max($0.peak, $0.now)
                }
                try await Task.sleep(for: .microseconds(Int.random(in: 0...200)))
                let text = String(decoding: message.value, as: UTF8.self).split(separator: ":")
                perKey.withLock { $0[String(text[0]), default: []].append(Int(text[1])!) }
                active.withLock { $0.now -= 1 }
            })
        let running = Task { try await host.run() }
        try await waitUntil("3,000 handled") { perKey.value.values.reduce(0) { $0 + $1.count } == 3_000 }
        host.shutdown()
        try await running.value
        for (key, sequence) in perKey.value { #expect(sequence == Array(0..<sequence.count), "\(key) in order") }
        #expect(active.value.peak > 2, "keys ran in parallel")
    }

    @Test("stop: a failing message stops its shard there while other partitions commit to the end")
    func stopPolicyCommitsNothingPast() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 3])
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for index in 0..<300 {
            let value = index == 120 ? "poison" : "ok \(index)"
            _ = try await producer.send(
                ProducerRecord(topic: "orders", partition: Int32(index % 3), value: Array(value.utf8)))
        }
        await producer.close()
        let group = HostFixture.uniqueGroup()
        var settings = TopicConfiguration()
        settings.breaker = .latched
        let host = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": settings]),
            logger: HostFixture.logger)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison") { throw TestFailure(description: "cannot parse order") }
                handled.append(message)
            })
        let running = Task { try await host.run() }
        // Message 120 is partition 0, offset 40.
        try await waitUntil("the poison shard tripped and the others finished") {
            let shards = host.shards
            let poisoned = shards.first { $0.topicPartition == TopicPartition("orders", 0) }
            guard case .tripped = poisoned?.state else { return false }
            #expect(poisoned?.lastError == "handler failed at offset 40: cannot parse order")
            #expect(poisoned?.pauseReasons.contains(.breaker) == true)
            return handled.count == 40 + 100 + 100
        }
        host.shutdown()
        try await running.value
        let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 3)
        #expect(committed == [0: 40, 1: 100, 2: 100])
    }

    @Test("deadLetter: the failed message lands in the dead-letter topic with its headers, and the offset moves on")
    func deadLetter() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 1, "orders.dlq": 1])
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for index in 0..<10 {
            _ = try await producer.send(
                ProducerRecord(
                    topic: "orders", key: Array("k\(index)".utf8), value: Array((index == 4 ? "poison" : "ok").utf8)))
        }
        await producer.close()
        var settings = TopicConfiguration()
        settings.onFailure = .init(
            retries: 2, backoff: .init(initial: .milliseconds(5), maximum: .milliseconds(10)), then: .deadLetter)
        settings.deadLetterTopic = "orders.dlq"
        let group = HostFixture.uniqueGroup()
        let host = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": settings]),
            logger: HostFixture.logger)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.value == KafkaBytes("poison") { throw TestFailure(description: "cannot parse order") }
                handled.append(message)
            })
        let running = Task { try await host.run() }
        try await waitUntil("9 handled and 1 dead-lettered") {
            handled.count == 9 && host.shards.first?.deadLettered == 1
        }
        host.shutdown()
        try await running.value
        #expect(try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 1) == [0: 10])

        var reader = KafkaConsumerConfiguration(
            bootstrapServers: cluster.bootstrapServers, groupID: HostFixture.uniqueGroup())
        reader.sessionTimeout = .seconds(6)
        let consumer = try KafkaConsumer(configuration: reader, logger: HostFixture.logger)
        try await consumer.subscribe(topics: ["orders.dlq"])
        var letter: ConsumedMessage?
        for await event in consumer.events {
            guard case .assigned(let partitions) = event, let partition = partitions.first,
                let messages = consumer.messages(for: partition)
            else { continue }
            for await batch in messages {
                letter = batch.first
                break
            }
            break
        }
        await consumer.close()
        let message = try #require(letter)
        #expect(message.value == KafkaBytes("poison"))
        #expect(message.key == KafkaBytes("k4"))
        let headers = Dictionary(
            uniqueKeysWithValues: message.headers.map { ($0.key, String(decoding: $0.value ?? [], as: UTF8.self)) })
        #expect(headers["sluice.source.topic"] == "orders")
        #expect(headers["sluice.source.partition"] == "0")
        #expect(headers["sluice.source.offset"] == "4")
        #expect(headers["sluice.attempts"] == "3")
        #expect(headers["sluice.error"] == "cannot parse order")
    }

    @Test("a host stopped mid-run and a new one started lose nothing")
    func restartLosesNothing() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4])
        try await HostFixture.produce(cluster, topic: "orders", count: 4_000, keys: 40)
        let group = HostFixture.uniqueGroup()
        let handled = HandledMessages()
        // Slow enough (at least 1 s for the 4,000 on four lanes) that the shutdown below comes mid-run.
        let slow = ClosureHandler { message, _ in
            try await Task.sleep(for: .milliseconds(1))
            handled.append(message)
        }
        let first = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": TopicConfiguration()]),
            logger: HostFixture.logger)
        first.register("orders", slow)
        let firstRun = Task { try await first.run() }
        try await waitUntil("some progress") { handled.count >= 500 }
        first.shutdown()
        try await firstRun.value
        let handledByFirst = handled.count
        #expect(handledByFirst < 4_000, "stopped mid-run")

        let second = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: group, topics: ["orders": TopicConfiguration()]),
            logger: HostFixture.logger)
        second.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let secondRun = Task { try await second.run() }
        try await waitUntil("everything handled") { handled.distinct == 4_000 }
        second.shutdown()
        try await secondRun.value
        #expect(
            handled.count - handled.distinct < 100,
            "at-least-once: few redeliveries, got \(handled.count - handled.distinct)")
        let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 4)
        #expect(committed == (try await HostFixture.endOffsets(cluster, topic: "orders", partitions: 4)))
    }

    @Test("two hosts in one group split the partitions; after one stops the other finishes everything")
    func twoHostsShareTheGroup() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 4])
        let group = HostFixture.uniqueGroup()
        let handledA = HandledMessages()
        let handledB = HandledMessages()
        var configuration = HostFixture.configuration(cluster, group: group, topics: ["orders": TopicConfiguration()])
        configuration.kafka.commitInterval = .seconds(30)
        let hostA = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        hostA.register("orders", ClosureHandler { message, _ in handledA.append(message) })
        let hostB = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        hostB.register("orders", ClosureHandler { message, _ in handledB.append(message) })
        let runA = Task { try await hostA.run() }
        try await waitUntil("A runs all four partitions") { hostA.shards.filter { $0.state == .running }.count == 4 }
        let firstGenerations = Dictionary(uniqueKeysWithValues: hostA.shards.map { ($0.topicPartition, $0.generation) })
        let runB = Task { try await hostB.run() }
        try await HostFixture.waitUntil("both hosts own partitions", showing: ["A": hostA, "B": hostB]) {
            hostA.shards.filter { $0.state == .running }.count == 2
                && hostB.shards.filter { $0.state == .running }.count == 2
        }
        for shard in hostA.shards where shard.state == .running {
            #expect(
                shard.generation == firstGenerations[shard.topicPartition],
                "\(shard.topicPartition) kept running through the rebalance")
        }
        let first = try await HostFixture.produce(cluster, topic: "orders", count: 800, keys: 80)
        try await waitUntil("both handled their half") { handledA.count + handledB.count == 800 }
        #expect(handledA.count > 0 && handledB.count > 0)
        hostA.shutdown()
        try await runA.value
        let second = try await HostFixture.produce(cluster, topic: "orders", count: 800, keys: 80)
        try await waitUntil("B took over A's partitions and handled the rest") {
            Set((handledA.all.value + handledB.all.value).map { "\($0.partition)/\($0.offset)" }).count == 1_600
        }
        try await waitUntil("B runs all four partitions once A left") {
            hostB.shards.filter { $0.state == .running }.map(\.topicPartition.partition).sorted() == [0, 1, 2, 3]
        }
        hostB.shutdown()
        try await runB.value
        let committed = try await HostFixture.committed(cluster, group: group, topic: "orders", partitions: 4)
        // The end of each partition is what was produced to it (not a listed high watermark: tansu reports it short).
        let ends = first.merging(second, uniquingKeysWith: +).mapValues { Int64($0) }
        #expect(committed == ends, "B committed to the end")
    }

    @Test("a topic configured without a handler refuses to start, naming the topic")
    func missingHandler() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let host = SluiceHost(
            configuration: HostFixture.configuration(
                cluster, group: "g", topics: ["orders": TopicConfiguration(), "payments": TopicConfiguration()]),
            logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let error = await #expect(throws: SluiceError.self) { try await host.run() }
        #expect(
            error?.message.contains("topics.payments: topic 'payments' is configured but no handler is registered")
                == true)
    }

    @Test("a flag file that cannot be read at start stops the start, naming the file: nothing runs unflagged")
    func missingFlagFileAtStart() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        var configuration = HostFixture.configuration(cluster, group: HostFixture.uniqueGroup(), topics: [:])
        configuration.flags.file = "/nonexistent/sluice-flags.yaml"
        let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let error = await #expect(throws: SluiceError.self) { try await host.run() }
        #expect(
            error?.message.hasPrefix("flags.file: /nonexistent/sluice-flags.yaml: cannot read the flag file") == true,
            "\(error?.message ?? "")")
        #expect(host.shards.isEmpty)
    }

    @Test("a registered topic used as another topic's dead-letter topic refuses to start")
    func deadLetterTopicConsumed() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1, "orders-dlq": 1])
        var orders = TopicConfiguration()
        orders.onFailure.then = .deadLetter
        orders.deadLetterTopic = "orders-dlq"
        let host = SluiceHost(
            configuration: HostFixture.configuration(
                cluster, group: HostFixture.uniqueGroup(), topics: ["orders": orders]),
            logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        host.register("orders-dlq", ClosureHandler { _, _ in })
        let error = await #expect(throws: SluiceError.self) { try await host.run() }
        #expect(error?.message.contains("topics.orders.deadLetterTopic: 'orders-dlq' is a consumed topic") == true)
    }

    /// Found measuring assignors: OrderService with `partition.assignment.strategy: range` in kafka.properties
    /// logged "crash journal open" and then hung, without a word, until it was killed (its summary loop spun
    /// once the host's error cancelled it); as a worker, it kept sending heartbeats and was never replaced.
    @Test(
        "a librdkafka property the consumer sets itself (kafka.properties.partition.assignment.strategy) refuses the start, naming it, with or without the crash journal"
    )
    func ownedPropertyRefused() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        for crashJournal in [false, true] {
            var configuration = HostFixture.configuration(
                cluster, group: HostFixture.uniqueGroup(), topics: ["orders": TopicConfiguration()])
            configuration.kafka.properties["partition.assignment.strategy"] = "range"
            configuration.crashJournal = crashJournal
            configuration.stateDirectory =
                FileManager.default.temporaryDirectory
                .appendingPathComponent("sluice-state-\(UUID().uuidString)").path
            let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
            host.register("orders", ClosureHandler { _, _ in })
            #expect(host.livenessHealthy, "a worker's host beats while it starts")
            let error = await #expect(throws: (any Error).self) { try await host.run() }
            #expect(
                "\(error.map { "\($0)" } ?? "")".contains("partition.assignment.strategy"),
                "crash journal \(crashJournal): \(String(describing: error))")
            #expect(!host.livenessHealthy, "a host whose run ended sends no heartbeat, whatever its process does next")
        }
    }

    @Test(
        "a dead-letter topic missing from the cluster refuses the start, naming the key and the topic, and creates nothing"
    )
    func deadLetterTopicMissing() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        var orders = TopicConfiguration()
        orders.onFailure.then = .deadLetter
        orders.deadLetterTopic = "orders.dlq"
        let host = SluiceHost(
            configuration: HostFixture.configuration(
                cluster, group: HostFixture.uniqueGroup(), topics: ["orders": orders]),
            logger: HostFixture.logger)
        host.register("orders", ClosureHandler { _, _ in })
        let error = await #expect(throws: SluiceError.self) { try await host.run() }
        #expect(
            error?.message
                == "topics.orders.deadLetterTopic: topic 'orders.dlq' does not exist in the cluster; create it (Sluice does not create topics)"
        )
        // Asking did not create it (the embedded cluster creates topics a client asks for with auto-creation on).
        let consumer = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(
                bootstrapServers: cluster.bootstrapServers, groupID: HostFixture.uniqueGroup()),
            logger: HostFixture.logger)
        #expect(try await consumer.topicExists("orders.dlq") == false)
        #expect(try await consumer.topicExists("orders"))
        await consumer.close()
    }

    @Test("/readyz turns false while a broker outage has cost the host its group session, and true once it rejoined")
    func readinessAfterLostSession() async throws {
        // Taking a broker of the embedded cluster down can abort the whole process (its listener is re-bound
        // to the same port at once, and librdkafka 2.0.2 asserts if the port was taken meanwhile): run in a
        // process of its own, and again once if the cluster, not the test, failed.
        guard ProcessInfo.processInfo.environment[BlockingHandlerTests.aloneVariable] == "readinessAfterLostSession"
        else {
            var (status, output) = try await BlockingHandlerTests.runAlone("readinessAfterLostSession")
            if status != 0, output.contains("Failed to-create mock broker listener") {
                print("the embedded cluster could not re-bind its broker's port; running the test again")
                (status, output) = try await BlockingHandlerTests.runAlone("readinessAfterLostSession")
            }
            #expect(
                status == 0 && output.contains("Test run with 1 test"),
                "the test in its own process:\n\(output.suffix(4_000))")
            return
        }
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        let host = SluiceHost(
            configuration: HostFixture.configuration(cluster, group: HostFixture.uniqueGroup(), topics: [:]),
            logger: HostFixture.logger)
        let handled = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let running = Task { try await host.run() }
        try await waitUntil("running and ready") { host.readiness.ready && host.shards.count == 2 }
        let lost = Dictionary(uniqueKeysWithValues: host.shards.map { ($0.topicPartition, $0.generation) })
        try cluster.setBrokerDown(1)
        try await waitUntil("not ready once the session is lost") {
            host.readiness.reasons.contains("the consumer lost its group session and its partitions; it is rejoining")
        }
        // The host may already have rejoined and been given a partition again (a shard of a later generation,
        // seen once in CI); none of the lost ones is left. The consumer says the session is lost (readiness) as
        // the loss arrives; the supervisor loop removes the lost shards when it handles that event, a moment
        // later (a fresh-clone run under load saw orders/1 still listed at the first look).
        let lostShardsGone = await eventually {
            host.shards.allSatisfy { shard in lost[shard.topicPartition].map { shard.generation > $0 } ?? true }
        }
        #expect(lostShardsGone, "lost shards are gone: nothing of them is handled or stored")
        try cluster.setBrokerUp(1)
        try await waitUntil("ready again after rejoining", timeout: .seconds(60)) {
            host.readiness.ready && host.shards.count == 2
        }
        try await HostFixture.produce(cluster, topic: "orders", count: 100, keys: 10)
        try await waitUntil("consuming again") { handled.count == 100 }
        host.shutdown()
        try await running.value
    }
}
