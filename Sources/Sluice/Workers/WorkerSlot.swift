#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One worker slot of a supervising host (docs/architecture.md §14), pure: whether its worker process runs, is
/// being replaced after a death (at once the first time, then with a growing backoff), is tripped after
/// too many deaths in a row, or is stopping. Its events (``start(now:)``, ``spawned(pid:now:)``, ``beat(now:)``,
/// ``exited(pid:_:now:)``, ``tick(now:)``, ``stop()``) return what the supervisor does: start a worker,
/// kill one that stopped answering, ask one to drain. Time comes in as instants; no clock, no process here.
struct WorkerSlot: Sendable {
    /// How a slot restarts its worker and when it gives up.
    struct Policy: Sendable, Hashable {
        /// The delay before restart k ≥ 2 (the first restart after a healthy run is at once): doubles from
        /// `restartBackoff.initial` up to `.maximum`.
        var restartBackoff = BreakerPolicy.RestartBackoff(initial: .milliseconds(500), maximum: .seconds(30), jitter: 0)
        /// Deaths in a row (without a healthy run between) that trip the slot: a worker that dies at every start
        /// stops being started, instead of looping.
        var tripAfter = 5
        /// A worker that ran this long without dying ends the run of deaths.
        var healthyAfter: Duration = .seconds(60)
        /// A worker that sent no heartbeat for this long is killed and replaced (hung: a deadlock, or the
        /// runtime's crash handling that never ends).
        var heartbeatTimeout: Duration = .seconds(10)
    }

    enum State: Sendable, Equatable {
        /// Not started yet.
        case idle
        /// Being started.
        case starting
        /// Its worker runs.
        case running(pid: Int32, since: ContinuousClock.Instant, lastBeat: ContinuousClock.Instant)
        /// Its worker was killed for not answering; waiting for it to exit.
        case killing(pid: Int32)
        /// Its worker died; the next one starts at `until`.
        case backingOff(until: ContinuousClock.Instant)
        /// Too many deaths in a row: no worker is started again until the host restarts.
        case tripped(reason: String)
        /// Asked to drain: its worker was told to stop.
        case stopping(pid: Int32)
        /// Done: its worker exited after a stop (or none ran).
        case stopped(cleanly: Bool)
    }

    /// How a worker process ended.
    enum Exit: Sendable, Equatable {
        /// It exited with this status code.
        case code(Int32)
        /// A signal ended it.
        case signal(Int32)
        /// It could not be started.
        case notStarted
    }

    /// What the supervisor does.
    enum Action: Sendable, Equatable {
        /// Start a worker process for the slot (then ``spawned(pid:now:)``, or ``exited(pid:_:now:)``
        /// with pid 0 when it could not be started).
        case spawn
        /// Kill the worker at once (SIGKILL): it stopped answering.
        case kill(pid: Int32)
        /// Ask the worker to drain and exit (SIGTERM).
        case terminate(pid: Int32)
        /// Log that the slot tripped.
        case tripped(reason: String)
        case none
    }

    let index: Int
    let policy: Policy
    private(set) var state: State = .idle
    /// Deaths since the last healthy run.
    private(set) var deathsInARow = 0
    /// Workers started after a death (what `sluice_worker_restarts_total{slot}` counts).
    private(set) var restarts = 0

    init(index: Int, policy: Policy = Policy()) {
        self.index = index
        self.policy = policy
    }

    /// Whether the slot is done: stopped, or tripped (nothing more will run in it).
    var isFinal: Bool {
        switch state {
        case .stopped, .tripped: true
        default: false
        }
    }

    /// The pid of its worker while one runs.
    var pid: Int32? {
        switch state {
        case .running(let pid, _, _), .killing(let pid), .stopping(let pid): pid
        default: nil
        }
    }

    mutating func start(now: ContinuousClock.Instant) -> Action {
        guard state == .idle else { return .none }
        state = .starting
        return .spawn
    }

    mutating func spawned(pid: Int32, now: ContinuousClock.Instant) -> Action {
        switch state {
        case .starting:
            state = .running(pid: pid, since: now, lastBeat: now)
            return .none
        case .stopped, .stopping:
            // Stopped while it was being started: it drains at once.
            state = .stopping(pid: pid)
            return .terminate(pid: pid)
        default:
            return .none
        }
    }

    mutating func beat(now: ContinuousClock.Instant) {
        if case .running(let pid, let since, _) = state { state = .running(pid: pid, since: since, lastBeat: now) }
    }

    /// Its worker `pid` ended (pid 0 with ``Exit/notStarted``: none could be started). After a stop it ended
    /// cleanly when it exited 0, or when the SIGTERM it was sent ended it before it could handle it (a worker
    /// still starting: its `main` had not installed its signal handling, and it had no partitions to drain).
    mutating func exited(pid: Int32, _ exit: Exit, now: ContinuousClock.Instant) -> Action {
        switch state {
        case .stopping(let running) where running == pid:
            state = .stopped(cleanly: exit == .code(0) || exit == .signal(SIGTERM))
            return .none
        case .running(let running, let since, _) where running == pid:
            if now - since >= policy.healthyAfter { deathsInARow = 0 }
            return died(now: now, reason: "worker \(pid) of slot \(index) exited")
        case .killing(let running) where running == pid:
            return died(now: now, reason: "worker \(pid) of slot \(index) stopped answering and was killed")
        case .starting where exit == .notStarted:
            return died(now: now, reason: "a worker of slot \(index) could not be started")
        default:
            return .none
        }
    }

    private mutating func died(now: ContinuousClock.Instant, reason: String) -> Action {
        deathsInARow += 1
        if deathsInARow >= policy.tripAfter {
            let why = "\(reason); \(deathsInARow) deaths in a row: the slot is tripped and starts no more workers"
            state = .tripped(reason: why)
            return .tripped(reason: why)
        }
        restarts += 1
        if deathsInARow == 1 {
            state = .starting
            return .spawn
        }
        let delay = policy.restartBackoff.delay(attempt: deathsInARow - 1)
        state = .backingOff(until: now + delay)
        return .none
    }

    /// Time passed: a worker silent past ``Policy/heartbeatTimeout`` is killed; a backoff that ended starts the next.
    mutating func tick(now: ContinuousClock.Instant) -> Action {
        switch state {
        case .running(let pid, _, let lastBeat) where now - lastBeat > policy.heartbeatTimeout:
            state = .killing(pid: pid)
            return .kill(pid: pid)
        case .backingOff(let until) where now >= until:
            state = .starting
            return .spawn
        default:
            return .none
        }
    }

    /// The host is shutting down: a running worker drains; a slot with none is done.
    mutating func stop() -> Action {
        switch state {
        case .running(let pid, _, _):
            state = .stopping(pid: pid)
            return .terminate(pid: pid)
        case .killing(let pid):
            state = .stopping(pid: pid)
            return .none
        case .starting:
            // Its worker's spawn is answered with a terminate.
            state = .stopped(cleanly: true)
            return .none
        case .idle, .backingOff:
            state = .stopped(cleanly: true)
            return .none
        case .tripped:
            state = .stopped(cleanly: false)
            return .none
        case .stopping, .stopped:
            return .none
        }
    }
}
