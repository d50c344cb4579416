import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

/// With `--workers N`: a trap in one worker's handler under a steady 1,000 messages a second over 8 partitions
/// (issue "Worker processes"), the control plane on so the quarantine is the group's. What it reports: whether
/// the supervisor lived on, worker deaths (one, the poison then quarantined), the longest pause of the other
/// workers' partitions around the death against their longest before it, and how long after the death each of
/// the dead worker's partitions ran again.
extension BenchCommand {
    static let workerTrapVariable = "SLUICE_BENCH_WORKER_TRAP"
    static let trapTopic = "trapbench"
    static let trapGroup = "sluice-bench-workers"
    static let trapPartitions = 8
    /// The poison: this offset of partition 0, about two seconds into the run.
    static let trapOffset: Int64 = 250

    /// Topics the broker needs for it.
    static let workerTrapTopics = [
        "\(trapTopic):\(trapPartitions)", "__sluice-control-\(trapGroup):1", "__sluice-audit-\(trapGroup):1",
    ]

    func trapConfiguration(_ cluster: String, state: String) -> SluiceConfiguration {
        var configuration = hostConfiguration(cluster, group: "unused", topics: [Self.trapTopic: TopicConfiguration()])
        configuration.kafka.group = Self.trapGroup
        configuration.stateDirectory = state
        configuration.workers = workers
        configuration.control.enabled = true
        configuration.control.createTopics = false
        return configuration
    }

    /// The supervisor's side: produce steadily, run the host with its workers, sample each worker's per-partition
    /// counts every 20 ms, and report.
    func runWorkerTrap(_ cluster: String, logger: Logger) async throws {
        let rate = 1_000
        let seconds = 15
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)")
            .path
        setenv(Self.workerBootstrapVariable, cluster, 1)
        setenv(Self.workerStateVariable, state, 1)
        setenv(Self.workerTrapVariable, "1", 1)
        defer {
            unsetenv(Self.workerBootstrapVariable)
            unsetenv(Self.workerStateVariable)
            unsetenv(Self.workerTrapVariable)
        }
        let host = SluiceHost(configuration: trapConfiguration(cluster, state: state), logger: logger)
        host.register(Self.trapTopic, CountingHandler(counter: RateCounter()))  // runs in the workers
        let running = Task { try await host.run() }
        // Joined before the producer starts: the partitions are assigned, nothing is behind.
        try await Task.sleep(for: .seconds(3))
        let producer = try startProducer(cluster, topic: Self.trapTopic, rate: rate, count: rate * seconds)
        let started = ContinuousClock.now
        /// Per partition: when it last went up in any worker, the longest pause between two rises before and
        /// after the first death, and which workers it rose in (a partition can move in a rebalance).
        var lastRise: [Int: ContinuousClock.Instant] = [:]
        var previous: [Int: [Int: Int]] = [:]  // slot -> partition -> count
        var owner: [Int: Int] = [:]
        var owners: [Int: Set<Int>] = [:]
        var longestBefore: [Int: Duration] = [:]
        var longestAfter: [Int: Duration] = [:]
        var death: (at: ContinuousClock.Instant, slot: Int)?
        var deadPartitions: Set<Int> = []
        var resumed: [Int: Duration] = [:]
        var restarts = 0
        while ContinuousClock.now < started + .seconds(seconds + 10) {
            try await Task.sleep(for: .milliseconds(20))
            let now = ContinuousClock.now
            let slots = host.workerSlots
            let totalRestarts = slots.reduce(0) { $0 + $1.restarts }
            if totalRestarts > restarts, death == nil, let slot = slots.first(where: { $0.restarts > 0 }) {
                death = (now, slot.slot)
                deadPartitions = Set(owner.filter { $0.value == slot.slot }.map(\.key))
            }
            restarts = totalRestarts
            var rose: Set<Int> = []
            for slot in 0..<workers {
                let counts = Self.readPartitionCounts("\(state)/w\(slot)/\(Self.workerCountFile)")
                for (partition, count) in counts where count > previous[slot]?[partition] ?? 0 {
                    rose.insert(partition)
                    owner[partition] = slot
                    owners[partition, default: []].insert(slot)
                }
                // A successor's file starts from zero.
                previous[slot] = counts
            }
            for partition in rose {
                if let last = lastRise[partition] {
                    let pause = now - last
                    if let death, now > death.at {
                        longestAfter[partition] = max(longestAfter[partition] ?? .zero, pause)
                    } else {
                        longestBefore[partition] = max(longestBefore[partition] ?? .zero, pause)
                    }
                }
                lastRise[partition] = now
                if let death, deadPartitions.contains(partition), resumed[partition] == nil, now > death.at {
                    resumed[partition] = now - death.at
                }
            }
            if !producer.isRunning, death != nil, resumed.count >= deadPartitions.count - 1 { break }
        }
        producer.terminate()
        let alive = !running.isCancelled && host.workerSlots.contains { $0.state == "running" }
        let quarantined = host.workerShards.first { $0.topic == Self.trapTopic && $0.partition == 0 }?.quarantine
        host.shutdown()
        try? await running.value
        func milliseconds(_ duration: Duration?) -> String {
            duration.map { "\(Int(($0.seconds * 1_000).rounded())) ms" } ?? "-"
        }
        print(
            "worker trap, \(workers) workers, \(rate) msg/s over \(Self.trapPartitions) partitions, a trap at \(Self.trapTopic)/0@\(Self.trapOffset):"
        )
        print("  supervisor alive: \(alive ? "yes" : "no"); worker deaths: \(restarts)")
        print(
            "  the poison: \(quarantined.map { "\($0.state) at offset \($0.offset) after \($0.crashes) death(s)" } ?? "not quarantined")"
        )
        let others = Set(owner.keys).subtracting(deadPartitions)
        let stayed = others.filter { owners[$0]?.count == 1 }.sorted()
        let moved = others.subtracting(stayed).sorted()
        print(
            "  the other workers' partitions that stayed \(stayed): longest pause before the death \(milliseconds(stayed.compactMap { longestBefore[$0] }.max())), after it \(milliseconds(stayed.compactMap { longestAfter[$0] }.max()))"
        )
        if !moved.isEmpty {
            print(
                "  the other workers' partitions moved in the rebalance \(moved): longest pause after the death \(moved.map { milliseconds(longestAfter[$0]) }.joined(separator: ", "))"
            )
        }
        let back = deadPartitions.subtracting([0]).sorted()
        print(
            "  the dead worker's healthy partitions \(back): running again after the death in \(back.map { milliseconds(resumed[$0]) }.joined(separator: ", "))"
        )
    }

    /// A worker of the trap scenario: counts per partition, and traps on the poison.
    func runTrapWorker(state: String, worker: WorkerEnvironment, cluster: String, logger: Logger) async throws {
        let host = SluiceHost(configuration: trapConfiguration(cluster, state: state), logger: logger)
        let counts = PartitionCounts()
        host.register(Self.trapTopic, TrappingHandler(counts: counts))
        let countFile = "\(state)/w\(worker.slot)/\(Self.workerCountFile)"
        let reporter = Task {
            while !Task.isCancelled {
                counts.write(to: countFile)
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        try await host.run()
        reporter.cancel()
        counts.write(to: countFile)
    }

    static func readPartitionCounts(_ path: String) -> [Int: Int] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var result: [Int: Int] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let partition = Int(parts[0]), let count = Int(parts[1]) else { continue }
            result[partition] = count
        }
        return result
    }
}

/// Messages handled per partition in this process.
final class PartitionCounts: Sendable {
    private let counts = Mutex<[Int32: Int]>([:])
    func add(_ partition: Int32) { counts.withLock { $0[partition, default: 0] += 1 } }
    func write(to path: String) {
        let text = counts.withLock { $0 }.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)\n" }.joined()
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8)) else { return }
        _ = rename(temporary, path)
    }
}

/// Counts, and traps on the poison (a `fatalError`: the process dies, as a handler that traps takes it).
struct TrappingHandler: MessageHandler {
    let counts: PartitionCounts
    func handle(_ message: Message, context: ShardContext) async throws {
        if message.partition == 0, message.offset == BenchCommand.trapOffset {
            fatalError("the bench's poison message at \(context.topicPartition)@\(message.offset)")
        }
        counts.add(message.partition)
    }
}
