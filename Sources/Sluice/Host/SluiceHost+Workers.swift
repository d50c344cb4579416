import Logging
import ServiceLifecycle

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Worker processes (`host.workers`, docs/architecture.md §14): the host as their supervisor, and a worker's
/// heartbeat to it.
extension SluiceHost {
    /// Whether this process supervises workers instead of consuming itself.
    var supervisesWorkers: Bool { configuration.workers > 0 && worker == nil }

    /// Runs the worker processes until shutdown: each slot's worker is this executable started again with the
    /// same arguments, so a user's `main` stays as it is.
    func superviseWorkers() async throws {
        if configuration.kafka.groupInstanceId == nil {
            logger.warning(
                "host.workers without kafka.groupInstanceId: a worker that restarts rejoins as a new member, and the group rebalances; set kafka.groupInstanceId (unique per host) for static membership"
            )
        }
        let supervisor = WorkerSupervisor(
            workers: configuration.workers, executable: ProcessSpawn.currentExecutable(),
            arguments: CommandLine.arguments, environment: ProcessInfo.processInfo.environment,
            drainLimit: configuration.shutdownTimeout + .seconds(10), clock: realTime, metricsFactory: metricsFactory,
            logger: logger)
        let stopAtOnce = state.withLock { state in
            state.workerSupervisor = supervisor
            state.running = true
            return state.shutdownRequested
        }
        if stopAtOnce { supervisor.stop() }
        logger.info("host started as the supervisor of \(configuration.workers) worker process(es)")
        defer { state.withLock { $0.running = false } }
        try await withGracefulShutdownHandler {
            try await supervisor.run()
        } onGracefulShutdown: {
            supervisor.stop()
        }
        logger.info("host stopped: every worker drained")
    }

    /// A worker's heartbeat: while it starts, and then while its loops turn (``health(limit:)``). A worker whose
    /// librdkafka client raised a fatal error stops beating too, so its supervisor replaces it.
    func startHeartbeat(_ worker: WorkerEnvironment) {
        LivenessBeat.start(
            descriptor: worker.livenessDescriptor,
            healthy: { [weak self] in self?.livenessHealthy ?? false },
            orphaned: { [weak self] in
                self?.logger.error("the supervisor is gone: this worker drains and exits")
                self?.shutdown()
            })
    }

    /// Whether a worker's heartbeat goes out: while the host starts (loading the control topic, joining) and
    /// while its loops turn, never once ``run()`` ended. A worker whose host ended (a bad property refused at
    /// start, say) but whose process lingers, held by the rest of its `main`, stops beating and is replaced.
    var livenessHealthy: Bool {
        let (running, ended) = state.withLock { ($0.running, $0.ended) }
        return !ended && (!running || health().healthy)
    }

    /// The worker slots while this host supervises workers (empty otherwise): each slot's state, its worker's
    /// pid, and how often its worker was replaced.
    public var workerSlots: [WorkerSlotReport] {
        guard let supervisor = state.withLock({ $0.workerSupervisor }) else { return [] }
        return supervisor.slots.map(WorkerSlotReport.init)
    }

    /// Ready when every slot has a running worker; each slot that does not is a reason.
    func workersReadiness(_ supervisor: WorkerSupervisor) -> (ready: Bool, reasons: [String]) {
        var reasons: [String] = []
        for slot in supervisor.slots {
            switch slot.state {
            case .running: break
            case .tripped(let reason): reasons.append("worker slot \(slot.index) is tripped: \(reason)")
            default: reasons.append("worker slot \(slot.index) has no running worker")
            }
        }
        if state.withLock({ $0.shutdownRequested }) { reasons.append("the host is shutting down") }
        return (reasons.isEmpty, reasons)
    }
}

/// One worker slot as the dashboard and status show it.
public struct WorkerSlotReport: Sendable, Equatable {
    /// The slot (0 up to `host.workers` - 1).
    public var slot: Int
    /// `starting`, `running`, `killing`, `backingOff`, `tripped`, `stopping` or `stopped`.
    public var state: String
    /// Its worker's process id while one runs.
    public var pid: Int32?
    /// Workers started after a death (`sluice_worker_restarts_total{slot}`).
    public var restarts: Int
    /// Why the slot tripped, when it did.
    public var trippedReason: String?

    init(_ slot: WorkerSlot) {
        self.slot = slot.index
        pid = slot.pid
        restarts = slot.restarts
        switch slot.state {
        case .idle, .starting: state = "starting"
        case .running: state = "running"
        case .killing: state = "killing"
        case .backingOff: state = "backingOff"
        case .tripped(let reason):
            state = "tripped"
            trippedReason = reason
        case .stopping: state = "stopping"
        case .stopped: state = "stopped"
        }
    }
}
