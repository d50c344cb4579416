import Foundation
import Logging
import Sluice
import SluiceKafka
import SluiceTesting
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Worker processes (docs/architecture.md §14) as a user meets them: OrderService with `host.workers: 2`, whose
/// handler traps on one order.
@Suite("Worker processes: a trap costs one worker, never the host", .timeLimit(.minutes(4)))
struct WorkerProcessTests {
    @Test(
        "a handler traps in one of two workers: the supervisor lives on, the worker is replaced, the order dead-lettered after one worker death, every partition finishes; SIGTERM drains both"
    )
    func trapInOneWorker() async throws {
        let containment = CrashContainmentTests()
        let cluster = try await TestClusters.start(
            topics: ["orders": CrashContainmentTests.partitions, "payments": 2, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        if cluster is EmbeddedKafkaCluster { try await cluster.addControlTopic("__sluice-control-\(group)") }
        let produced: Int64 = 4_000
        try await containment.produce(cluster, count: Int(produced))
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)")
            .path
        // As in the two-host test: the quarantine is published group-wide before the dead worker's session ends,
        // and the order is dead-lettered once it killed a process.
        let service = try containment.start(
            cluster, group: group, state: state, poison: 1_234,
            extra: ["SLUICE_CONTROL_ENABLED": "true", "SLUICE_HOST_WORKERS": "2"],
            editConfiguration: {
                $0.replacingOccurrences(
                    of: "    deadLetterTopic: orders.dlq\n",
                    with: "    deadLetterTopic: orders.dlq\n    onCrash: { after: 1, then: deadLetter }\n"
                )
                .replacingOccurrences(of: "sessionTimeout: 6s", with: "sessionTimeout: 20s")
            })
        let consumer = try containment.checker(cluster, group: group)
        var committed: [TopicPartition: Int64] = [:]
        let deadline = ContinuousClock.now + .seconds(150)
        while ContinuousClock.now < deadline, service.process.isRunning {
            committed = try await consumer.committedOffsets(for: containment.orderPartitions)
            // Every partition committed to its end (the commits add up to what was produced).
            if committed.values.reduce(0, +) == produced { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let log = service.errors.text
        #expect(service.process.isRunning, "the supervisor never exits: \(log.suffix(2_000))")
        let deaths = log.components(separatedBy: "worker died;").count - 1
        #expect(deaths == 1, "one worker death: \(log.suffix(4_000))")
        #expect(log.contains("quarantined message dead-lettered: it killed the process"))
        #expect(
            committed.values.reduce(0, +) == produced,
            "every partition finishes: \(committed.sorted { $0.key < $1.key })")
        let deadLetters = try await cluster.deadLetters(topic: "orders.dlq")
        #expect(deadLetters.count == 1 && deadLetters.first?.text.contains("\"n\":1234,") == true)
        #expect(log.contains("host started as the supervisor of 2 worker process(es)"))
        #expect(log.components(separatedBy: "admin API listening").count - 1 == 1, "only the supervisor binds the port")
        // The supervisor's /metrics counts the restart.
        let address = try #require(CrashContainmentTests.adminURL(in: log))
        var request = URLRequest(url: URL(string: address + "/metrics")!)
        request.setValue("Bearer test-token", forHTTPHeaderField: "Authorization")
        let (body, _) = try await URLSession.shared.data(for: request)
        let metrics = String(decoding: body, as: UTF8.self)
        #expect(
            metrics.contains(#"sluice_worker_restarts_total{slot="0"} 1"#)
                || metrics.contains(#"sluice_worker_restarts_total{slot="1"} 1"#),
            "\(metrics.split(separator: "\n").filter { $0.contains("worker") })")
        // One host to the outside: the supervisor's /metrics has each worker's samples under one family each, and
        // its /v1/shards and `sluice status` every shard of both workers.
        let processedFamily = metrics.split(separator: "\n").filter {
            $0.hasPrefix("# TYPE sluice_messages_processed_total ")
        }
        #expect(processedFamily.count == 1, "each family once: \(processedFamily)")
        for slot in 0..<2 {
            #expect(
                metrics.contains("sluice_messages_processed_total{worker=\"\(slot)\","),
                "worker \(slot)'s samples, labelled: \(metrics.split(separator: "\n").filter { $0.contains("processed") })"
            )
        }
        var shardsRequest = URLRequest(url: URL(string: address + "/v1/shards")!)
        shardsRequest.setValue("Bearer test-token", forHTTPHeaderField: "Authorization")
        let (shardsBody, _) = try await URLSession.shared.data(for: shardsRequest)
        struct Answer: Decodable { var shards: [ShardReport] }
        let shards = try JSONDecoder().decode(Answer.self, from: shardsBody).shards
        let orders = shards.filter { $0.topic == "orders" }
        #expect(
            Set(orders.map(\.partition)) == Set(0..<Int32(CrashContainmentTests.partitions)),
            "every orders shard: \(orders.map { "\($0.topicPartition) w\($0.worker ?? -1)" })")
        #expect(Set(orders.compactMap(\.worker)) == [0, 1], "shards of both workers, each with its slot")
        #expect(orders.allSatisfy { $0.worker != nil })
        let status = try SluiceProcess(["status", "--admin", address, "--token", "test-token"])
        #expect(await status.exit() == 0)
        let shown = await status.output.all()
        #expect(shown.contains("(w0)") && shown.contains("(w1)"), "\(shown)")

        service.process.terminate()
        #expect(await service.exit() == 0, "SIGTERM drains every worker, then the supervisor exits 0")
        #expect(await service.errors.all().contains("host stopped: every worker drained"))
        await consumer.close()
        let supervision = log.split(separator: "\n").filter {
            $0.contains("worker started") || $0.contains("worker died") || $0.contains("worker exited")
        }
        print(
            "worker processes: \(deaths) worker death, supervisor alive; commits \(committed.sorted { $0.key < $1.key })\n"
                + supervision.joined(separator: "\n"))
    }

    @Test(
        "a worker that stops answering (SIGSTOP: as a process held in the runtime's crash handling) is killed and replaced; every message is handled"
    )
    func silentWorkerReplaced() async throws {
        let containment = CrashContainmentTests()
        let (cluster, group, service) = try await Self.twoWorkers()
        var pid: Int32?
        let started = ContinuousClock.now + .seconds(60)
        while pid == nil, ContinuousClock.now < started {
            pid = Self.firstPid(service.errors.text, worker: 1)
            try await Task.sleep(for: .milliseconds(100))
        }
        let stopped = try #require(pid, "worker 1 started: \(service.errors.text.suffix(2_000))")
        #expect(kill(stopped, SIGSTOP) == 0)
        let produced: Int64 = 2_000
        try await containment.produce(cluster, count: Int(produced))
        let consumer = try containment.checker(cluster, group: group)
        var committed: [TopicPartition: Int64] = [:]
        let deadline = ContinuousClock.now + .seconds(120)
        func replaced(_ log: String) -> Bool {
            log.split(separator: "\n").filter { $0.contains("worker started") && $0.contains("sluice.worker=1") }.count
                == 2
        }
        // Until every message is committed (the other worker takes the silent one's partitions when its session
        // ends) and the silent worker was replaced.
        while ContinuousClock.now < deadline {
            committed = try await consumer.committedOffsets(for: containment.orderPartitions)
            if committed.values.reduce(0, +) == produced, replaced(service.errors.text) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let log = service.errors.text
        #expect(service.process.isRunning, "the supervisor never exits")
        #expect(log.contains("worker sent no heartbeat for 10.0 seconds: killed"), "\(log.suffix(3_000))")
        #expect(replaced(log), "slot 1 got a new worker")
        #expect(
            committed.values.reduce(0, +) == produced,
            "every message handled and committed: \(committed.sorted { $0.key < $1.key })")
        service.process.terminate()
        let status = await service.exit()
        let ending = await service.errors.all()
        #expect(status == 0, "SIGTERM drains every worker: \(ending.suffix(4_000))")
        await consumer.close()
    }

    /// Found running `make demo` with two workers: Ctrl-C reached the workers too (the terminal signals the
    /// whole job), one drained and exited 0 before the supervisor began to stop, and the supervisor counted a
    /// death and started another.
    @Test("Ctrl-C in a terminal stops the supervisor and its workers: no worker counted dead or started again")
    func interruptFromTerminal() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 8, "payments": 2, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        // In a process group of its own, as a shell runs a job: the test sends what a terminal sends.
        let (service, _) = try OrderServiceTests.startService(
            cluster, group: group, environment: ["SLUICE_HOST_WORKERS": "2"], ownProcessGroup: true)
        #expect(await service.errors.waitFor("partitions assigned", times: 2), "both workers consume")
        service.process.interruptGroup()
        #expect(await service.exit() == 0, "the supervisor drains every worker, then exits 0")
        let log = await service.errors.all()
        #expect(log.contains("host stopped: every worker drained"), "\(log.suffix(3_000))")
        #expect(!log.contains("worker died"), "\(log.suffix(3_000))")
        #expect(log.components(separatedBy: "worker started").count - 1 == 2, "\(log.suffix(3_000))")
    }

    /// Found measuring assignors: with a property the consumer sets itself in kafka.properties, each worker's
    /// host refused to start, but the worker's process hung (OrderService's summary loop spun once cancelled)
    /// and its heartbeat went on, so the supervisor never replaced it and the service hung without a word.
    @Test(
        "a worker whose host refuses to start is replaced until its slot trips; with every slot tripped the supervisor exits with an error"
    )
    func workerRefusedAtStart() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 8, "payments": 2, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let (service, _) = try OrderServiceTests.startService(
            cluster, group: group, environment: ["SLUICE_HOST_WORKERS": "2", "SLUICE_CONTROL_ENABLED": "false"],
            editConfiguration: {
                $0.replacingOccurrences(
                    of: "  commitInterval: 1s\n",
                    with: "  commitInterval: 1s\n  properties:\n    partition.assignment.strategy: range\n")
            })
        let status = await service.exit()
        let log = await service.errors.all()
        #expect(status != 0, "\(log.suffix(3_000))")
        #expect(log.contains("every worker slot tripped"), "\(log.suffix(3_000))")
        #expect(log.contains("partition.assignment.strategy"), "the workers name the property")
        #expect(!log.contains("no heartbeat"), "each worker exited by itself: \(log.suffix(3_000))")
    }

    /// OrderService with two workers (no poison order) on a cluster of its own: the cluster, the group, the service.
    static func twoWorkers(_ extra: [String: String] = [:]) async throws -> (
        any TestKafkaCluster, String, SluiceProcess
    ) {
        let cluster = try await TestClusters.start(
            topics: ["orders": CrashContainmentTests.partitions, "payments": 2, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)")
            .path
        let service = try CrashContainmentTests().start(
            cluster, group: group, state: state, poison: 999_999,
            extra: ["SLUICE_HOST_WORKERS": "2"].merging(extra) { $1 })
        return (cluster, group, service)
    }

    /// The process id of a worker slot's first worker, from the supervisor's log.
    static func firstPid(_ log: String, worker: Int) -> Int32? {
        lines(log, worker: worker, "worker started").first.flatMap { line in
            line.range(of: "sluice.pid=").flatMap { Int32(line[$0.upperBound...].prefix { $0.isNumber }) }
        }
    }

    /// The log lines of one worker slot that contain `text`.
    static func lines(_ log: String, worker: Int, _ text: String) -> [Substring] {
        log.split(separator: "\n").filter { $0.contains("sluice.worker=\(worker) ") && $0.contains(text) }
    }

    /// The partitions a log line names (`kafka.partitions=orders/0,orders/2`).
    static func partitions(_ line: Substring) -> Set<String> {
        guard let range = line.range(of: "kafka.partitions=") else { return [] }
        return Set(line[range.upperBound...].prefix { !$0.isWhitespace }.split(separator: ",").map(String.init))
    }

    @Test(
        "static members (kafka.groupInstanceId): a killed worker's replacement gets its partitions back, and the other worker keeps its own throughout"
    )
    func staticMemberReplaced() async throws {
        let (cluster, _, service) = try await Self.twoWorkers(["SLUICE_KAFKA_GROUP_INSTANCE_ID": "orders-host-1"])
        func owned(_ log: String, worker: Int) -> Set<String> {
            Self.lines(log, worker: worker, "partitions assigned").map(Self.partitions)
                .reduce(into: Set<String>()) { $0.formUnion($1) }
        }
        let joined = ContinuousClock.now + .seconds(60)
        while owned(service.errors.text, worker: 0).union(owned(service.errors.text, worker: 1)).count
            < CrashContainmentTests.partitions + 2, ContinuousClock.now < joined
        {
            try await Task.sleep(for: .milliseconds(100))
        }
        let before = service.errors.text
        let slotOne = owned(before, worker: 1)
        #expect(slotOne.union(owned(before, worker: 0)).count == 10, "both workers joined: \(before.suffix(3_000))")
        let pid = try #require(Self.firstPid(before, worker: 1))
        let linesBefore = before.split(separator: "\n").count
        let killed = ContinuousClock.now
        #expect(kill(pid, SIGKILL) == 0)
        // What the log says after the kill: the replacement of slot 1 has partitions again.
        var since = ""
        var back: Set<String> = []
        let deadline = ContinuousClock.now + .seconds(60)
        while back.isEmpty, ContinuousClock.now < deadline {
            since = service.errors.text.split(separator: "\n").dropFirst(linesBefore).joined(separator: "\n") + "\n"
            back = owned(since, worker: 1)
            if back.isEmpty { try await Task.sleep(for: .milliseconds(50)) }
        }
        let resumed = ContinuousClock.now - killed
        let otherLost =
            Self.lines(since, worker: 0, "partitions revoked") + Self.lines(since, worker: 0, "partitions lost")
        if cluster is EmbeddedKafkaCluster {
            // librdkafka's mock reads group.instance.id and ignores it: the replacement is a new member, and the
            // group rebalances (with librdkafka 2.16 the cooperative assignor may move a partition of the other
            // worker's while the dead member still counts).
            #expect(!back.isEmpty, "the replacement has partitions again: \(since.suffix(3_000))")
        } else {
            #expect(back == slotOne, "the same partitions back: \(back.sorted()) against \(slotOne.sorted())")
            // The other worker revokes nothing and loses nothing (a cooperative round may assign it nothing new).
            #expect(otherLost.isEmpty, "the other worker kept its partitions: \(otherLost)")
        }
        print(
            "static membership (\(type(of: cluster))): slot 1's partitions back after \(resumed); the other worker's assignment lines since the kill: \(Self.lines(since, worker: 0, "partitions ")); revoked or lost: \(otherLost.count)"
        )
        // How the slot came back, line by line (where the time goes).
        print(
            since.split(separator: "\n").filter { $0.contains("sluice.worker=1 ") }.prefix(30).joined(separator: "\n"))
        service.process.terminate()
        #expect(await service.exit() == 0)
    }
}
