import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Testing

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
        let cluster = try await TestClusters.start(
            topics: ["orders": CrashContainmentTests.partitions, "payments": 2, "orders.dlq": 1])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)")
            .path
        let service = try containment.start(
            cluster, group: group, state: state, poison: 999_999, extra: ["SLUICE_HOST_WORKERS": "2"])
        // The pid of slot 1's first worker, from the supervisor's log.
        var pid: Int32?
        let started = ContinuousClock.now + .seconds(60)
        while pid == nil, ContinuousClock.now < started {
            pid = service.errors.text.split(separator: "\n").first {
                $0.contains("worker started") && $0.contains("sluice.worker=1")
            }.flatMap { line in
                line.range(of: "sluice.pid=").flatMap { Int32(line[$0.upperBound...].prefix { $0.isNumber }) }
            }
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
}
