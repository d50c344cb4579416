import Foundation
import Logging
import Sluice
import SluiceKafka

/// Case w (`--workers N`): case b's host as a supervisor of N worker processes, for what worker processes cost
/// in CPU per message against one process (case b in the same run).
///
/// The supervisor starts this executable again with the same arguments: a process that finds itself a worker
/// (``WorkerEnvironment``) runs ``runBenchWorker(_:logger:)`` instead of the cases, with what the supervisor
/// put in its environment (the broker, the group, the state directory). Each worker writes how many messages
/// it handled and its CPU seconds since its first one to its state directory every 100 ms; the supervisor
/// adds them up, and its own CPU over the same time.
extension BenchCommand {
    static let workerBootstrapVariable = "SLUICE_BENCH_WORKER_BOOTSTRAP"
    static let workerGroupVariable = "SLUICE_BENCH_WORKER_GROUP"
    static let workerStateVariable = "SLUICE_BENCH_WORKER_STATE"
    static let workerCountFile = "bench-count"

    /// Whether this process is a worker of case w's host.
    static func isBenchWorker() -> Bool {
        let environment = ProcessInfo.processInfo.environment
        return WorkerEnvironment(environment) != nil && environment[workerBootstrapVariable] != nil
    }

    func workerConfiguration(_ cluster: String, group: String, state: String) -> SluiceConfiguration {
        var partitionOrdering = TopicConfiguration()
        partitionOrdering.ordering = .partition
        var configuration = hostConfiguration(cluster, group: "unused", topics: ["bench": partitionOrdering])
        configuration.kafka.group = group
        configuration.stateDirectory = state
        configuration.workers = workers
        return configuration
    }

    /// Case w in the supervisor: runs the host with `workers` worker processes until they handled every message.
    func runWorkers(_ cluster: String, logger: Logger) async throws -> (count: Int, seconds: Double, cpu: Double) {
        let group = "workers-\(UUID())"
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)")
            .path
        // What the workers need to know, in the environment they inherit.
        setenv(Self.workerBootstrapVariable, cluster, 1)
        setenv(Self.workerGroupVariable, group, 1)
        setenv(Self.workerStateVariable, state, 1)
        defer {
            unsetenv(Self.workerBootstrapVariable)
            unsetenv(Self.workerGroupVariable)
            unsetenv(Self.workerStateVariable)
        }
        let host = SluiceHost(configuration: workerConfiguration(cluster, group: group, state: state), logger: logger)
        host.register("bench", CountingHandler(counter: RateCounter()))  // runs in the workers, not here
        let running = Task { try await host.run() }
        var first: (at: ContinuousClock.Instant, cpu: Double)?
        var last = ContinuousClock.now
        var total: (count: Int, cpu: Double) = (0, 0)
        let deadline = ContinuousClock.now + .seconds(180)
        while total.count < messages, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            total = (0..<workers).reduce((0, 0)) { sum, slot in
                let reported = Self.readCount("\(state)/w\(slot)/\(Self.workerCountFile)")
                return (sum.0 + reported.count, sum.1 + reported.cpu)
            }
            if first == nil, total.count > 0 { first = (.now, RawConsumeLoop.processCPUSeconds()) }
            last = .now
        }
        // The supervisor's own CPU (heartbeats, the slots, reading the files) counts too.
        let supervisorCPU = first.map { RawConsumeLoop.processCPUSeconds() - $0.cpu } ?? 0
        host.shutdown()
        try await running.value
        let seconds = first.map { (last - $0.at).seconds } ?? 1
        return (total.count, max(seconds, 0.001), total.cpu + supervisorCPU)
    }

    /// A worker of case w: the host of its slot, counting what it handles, until its supervisor stops it.
    func runBenchWorker(logger: Logger) async throws {
        let environment = ProcessInfo.processInfo.environment
        guard let cluster = environment[Self.workerBootstrapVariable],
            let state = environment[Self.workerStateVariable],
            let worker = WorkerEnvironment(environment)
        else { return }
        if environment[Self.workerTrapVariable] != nil {
            try await runTrapWorker(state: state, worker: worker, cluster: cluster, logger: logger)
            return
        }
        guard let group = environment[Self.workerGroupVariable] else { return }
        let configuration = workerConfiguration(cluster, group: group, state: state)
        let host = SluiceHost(configuration: configuration, logger: logger)
        let counter = RateCounter()
        host.register("bench", CountingHandler(counter: counter))
        let countFile = "\(state)/w\(worker.slot)/\(Self.workerCountFile)"
        let reporter = Task {
            while !Task.isCancelled {
                Self.writeCount(counter, to: countFile)
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        try await host.run()
        reporter.cancel()
        Self.writeCount(counter, to: countFile)
    }

    /// `count cpu` (messages handled, CPU seconds since the first), written whole.
    static func writeCount(_ counter: RateCounter, to path: String) {
        let text = "\(counter.count) \(counter.cpuSinceFirst)\n"
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8)) else { return }
        _ = rename(temporary, path)
    }

    static func readCount(_ path: String) -> (count: Int, cpu: Double) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return (0, 0) }
        let parts = text.split(whereSeparator: \.isWhitespace)
        guard parts.count == 2, let count = Int(parts[0]), let cpu = Double(parts[1]) else { return (0, 0) }
        return (count, cpu)
    }
}
