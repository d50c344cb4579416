import Logging
import Metrics
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The host as a supervisor of worker processes (`host.workers`, docs/architecture.md §14): it owns no
/// partitions; it starts one worker per slot, restarts a worker that dies (at once, then with a backoff; a slot
/// whose workers keep dying trips), kills one that stops sending heartbeats, and on ``stop()`` asks every
/// worker to drain, returning once all exited. ``run()`` throws when a worker did not exit cleanly, or when every
/// slot tripped (the host then consumes nothing and must be restarted).
final class WorkerSupervisor: Sendable {
    enum Input: Sendable {
        case process(WorkerProcess.Event)
        case tick
        case stop
    }

    let workers: Int
    let policy: WorkerSlot.Policy
    let executable: String
    let arguments: [String]
    let environment: [String: String]
    /// How long workers may take to drain after a stop before they are killed.
    let drainLimit: Duration
    let clock: any HostClock
    let logger: Logger
    private let restarts: [Counter]
    private let inputs: AsyncStream<Input>
    private let input: AsyncStream<Input>.Continuation
    /// The slots as they were after the last event, for health and status.
    private let snapshot: Mutex<[WorkerSlot]>

    init(
        workers: Int, policy: WorkerSlot.Policy = WorkerSlot.Policy(), executable: String, arguments: [String],
        environment: [String: String], drainLimit: Duration, clock: any HostClock,
        metricsFactory: any MetricsFactory, logger: Logger
    ) {
        self.workers = workers
        self.policy = policy
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.drainLimit = drainLimit
        self.clock = clock
        self.logger = logger
        restarts = (0..<workers).map {
            Counter(label: "sluice_worker_restarts_total", dimensions: [("slot", "\($0)")], factory: metricsFactory)
        }
        (inputs, input) = AsyncStream.makeStream(of: Input.self)
        snapshot = Mutex((0..<workers).map { WorkerSlot(index: $0, policy: policy) })
    }

    /// The slots now.
    var slots: [WorkerSlot] { snapshot.withLock { $0 } }

    /// Asks every worker to drain; ``run()`` returns once all exited.
    func stop() {
        input.yield(.stop)
    }

    func run() async throws {
        var slots = snapshot.withLock { $0 }
        var processes: [Int32: WorkerProcess] = [:]
        /// Set once a stop came: when workers still running are killed, and whether they were.
        var stopping: (killAt: ContinuousClock.Instant, killed: Bool)?
        /// Restarts already counted in the metric, per slot.
        var counted = [Int](repeating: 0, count: workers)
        let (events, forward) = AsyncStream.makeStream(of: WorkerProcess.Event.self)
        let input = self.input
        let ticker = Task { [clock] in
            while !Task.isCancelled {
                try? await clock.sleep(until: clock.now + .milliseconds(250))
                input.yield(.tick)
            }
        }
        let forwarder = Task {
            for await event in events { input.yield(.process(event)) }
        }
        defer {
            ticker.cancel()
            forwarder.cancel()
            forward.finish()
        }

        func act(_ action: WorkerSlot.Action, slot index: Int) {
            switch action {
            case .none:
                return
            case .spawn:
                do {
                    let process = try WorkerProcess.spawn(
                        slot: index, executable: executable, arguments: arguments, environment: environment,
                        events: forward)
                    processes[process.pid] = process
                    logger.info(
                        "worker started", metadata: ["sluice.worker": "\(index)", "sluice.pid": "\(process.pid)"])
                    act(slots[index].spawned(pid: process.pid, now: clock.now), slot: index)
                } catch {
                    logger.error("\(error)", metadata: ["sluice.worker": "\(index)"])
                    act(slots[index].exited(pid: 0, .notStarted, now: clock.now), slot: index)
                }
            case .kill(let pid):
                logger.error(
                    "worker sent no heartbeat for \(policy.heartbeatTimeout): killed, and replaced once it exited",
                    metadata: ["sluice.worker": "\(index)", "sluice.pid": "\(pid)"])
                processes[pid]?.killGroup()
            case .terminate(let pid):
                processes[pid]?.signal(SIGTERM)
            case .tripped(let reason):
                logger.error(
                    "worker slot tripped", metadata: ["sluice.worker": "\(index)", "sluice.reason": "\(reason)"])
            }
        }

        for index in slots.indices { act(slots[index].start(now: clock.now), slot: index) }
        snapshot.withLock { $0 = slots }
        for await item in inputs {
            let now = clock.now
            switch item {
            case .process(.beat(let index, let pid)):
                if slots[index].pid == pid { slots[index].beat(now: now) }
            case .process(.exited(let index, let pid, let status, let exit)):
                processes[pid] = nil
                let action = slots[index].exited(pid: pid, exit, now: now)
                if stopping == nil {
                    logger.error(
                        "worker died; its partitions are started again by the next worker of its slot",
                        metadata: ["sluice.worker": "\(index)", "sluice.pid": "\(pid)", "sluice.status": "\(status)"])
                } else {
                    logger.info(
                        "worker exited", metadata: ["sluice.worker": "\(index)", "sluice.status": "\(status)"])
                }
                act(action, slot: index)
            case .tick:
                for index in slots.indices { act(slots[index].tick(now: now), slot: index) }
                if let (killAt, killed) = stopping, !killed, now >= killAt {
                    for process in processes.values {
                        logger.error(
                            "worker did not drain within \(drainLimit): killed",
                            metadata: ["sluice.worker": "\(process.slot)"])
                        process.killGroup()
                    }
                    stopping = (killAt, true)
                }
            case .stop:
                if stopping == nil { stopping = (now + drainLimit, false) }
                for index in slots.indices { act(slots[index].stop(), slot: index) }
            }
            for index in slots.indices where slots[index].restarts > counted[index] {
                restarts[index].increment(by: slots[index].restarts - counted[index])
                counted[index] = slots[index].restarts
            }
            snapshot.withLock { $0 = slots }
            if stopping != nil, slots.allSatisfy(\.isFinal), processes.isEmpty { break }
            if stopping == nil, slots.allSatisfy({ if case .tripped = $0.state { true } else { false } }) {
                throw SluiceError(
                    code: .state, message: "every worker slot tripped: the host consumes nothing and must be restarted")
            }
        }
        let unclean = slots.filter { $0.state != .stopped(cleanly: true) }.map(\.index)
        guard unclean.isEmpty else {
            throw SluiceError(
                code: .state, message: "worker slot(s) \(unclean) did not exit cleanly after the stop (see the log)")
        }
    }
}
