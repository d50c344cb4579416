import CSluiceCrash
import Synchronization

/// A task executor with threads of its own that grows past a blocked thread.
///
/// Handler code runs here, not on Swift's cooperative pool (as many threads as cores): a handler that
/// blocks its thread (a synchronous client, `sleep`, a CPU loop) would otherwise hold one of those few
/// threads, and two of them stop every shard, the watchdog and the admin API of a 2-core host.
///
/// Each worker counts the jobs it has run. A monitor on a real-time clock looks every `blockedAfter / 2`:
/// a worker busy in the same job for `blockedAfter` or longer is *blocked*; it is reported and another
/// thread starts (up to `maximumThreads`), so the executor keeps `threads` workers that are not blocked.
/// A blocked worker that finishes its job leaves if the executor has enough others.
final class ThreadPoolExecutor: TaskExecutor, Sendable {
    /// What the executor reports when a worker blocks or is released.
    struct Blocking: Sendable, Equatable {
        /// Workers busy in one job for `blockedAfter` or longer.
        let blocked: Int
        /// Workers alive.
        let threads: Int
        /// True when a blocked worker could not be replaced (the maximum is reached).
        let saturated: Bool
    }

    private final class Worker: Sendable {
        let identifier: Int
        /// Jobs run so far; the monitor compares it between two looks.
        let jobsRun = Atomic<UInt64>(0)
        let busy = Atomic<Bool>(false)
        init(identifier: Int) { self.identifier = identifier }
    }

    private struct State {
        var jobs: [UnownedJob] = []
        var head = 0
        var workers: [Int: Worker] = [:]
        var nextWorker = 0
        var idle = 0
        /// Workers found blocked, with the job count they were seen in.
        var blocked: [Int: UInt64] = [:]
        /// What the monitor saw on its last look: busy worker → jobs run then, and looks in that job.
        var lastLook: [Int: (jobs: UInt64, looks: Int)] = [:]
        var shuttingDown = false

        var pending: Int { jobs.count - head }

        mutating func pop() -> UnownedJob? {
            guard head < jobs.count else { return nil }
            let job = jobs[head]
            head += 1
            if head > 1024, head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            return job
        }
    }

    let name: String
    /// Workers kept that are not blocked.
    let threads: Int
    /// The most workers, blocked or not.
    let maximumThreads: Int
    let blockedAfter: Duration
    /// Whether only Sluice's own code runs here (not handlers): a fatal signal on its threads blames no message.
    let runsSluiceCode: Bool
    private let condition = MonotonicCondition()
    nonisolated(unsafe) private var state = State()
    private let onBlocking: @Sendable (Blocking) -> Void
    private let monitor = Mutex<HostClockTimer?>(nil)
    /// Real time, on which the monitor looks.
    private let clock: any HostClock

    /// - Parameters:
    ///   - threads: workers that are not blocked, kept running.
    ///   - maximumThreads: the most workers, counting blocked ones.
    ///   - blockedAfter: how long one job may run before its worker counts as blocked.
    ///   - clock: real time, whose timers run the monitor (a host hands in its own).
    ///   - onBlocking: called (on the clock's timer thread) when the number of blocked workers changes.
    init(
        name: String, threads: Int, maximumThreads: Int, blockedAfter: Duration, runsSluiceCode: Bool = false,
        clock: any HostClock, onBlocking: @escaping @Sendable (Blocking) -> Void = { _ in }
    ) {
        precondition(
            threads >= 1 && maximumThreads >= threads, "ThreadPoolExecutor needs 1 <= threads <= maximumThreads")
        self.name = name
        self.threads = threads
        self.maximumThreads = maximumThreads
        self.blockedAfter = blockedAfter
        self.runsSluiceCode = runsSluiceCode
        self.onBlocking = onBlocking
        self.clock = clock
        condition.withLock {
            for _ in 0..<threads { startWorker() }
        }
        scheduleMonitor()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.withLock {
            state.jobs.append(job)
            // After shutdown idle workers leave; a job that comes later (an abandoned handler call
            // finishing) still gets a thread.
            if state.workers.isEmpty { startWorker() }
            if state.idle > 0 { condition.signal() }
        }
    }

    /// Lets workers leave once idle and stops the monitor. Jobs enqueued later still run.
    func shutdown() {
        condition.withLock {
            state.shuttingDown = true
            condition.broadcast()
        }
        if let timer = monitor.withLock({ $0.take() }) { clock.cancel(timer) }
    }

    /// Workers alive and workers blocked now.
    var census: (threads: Int, blocked: Int) {
        condition.withLock { (state.workers.count, state.blocked.count) }
    }

    // MARK: Workers

    /// Call with the lock held.
    private func startWorker() {
        let worker = Worker(identifier: state.nextWorker)
        state.nextWorker += 1
        state.workers[worker.identifier] = worker
        startThread(named: "\(name)-\(worker.identifier)", sluiceCode: runsSluiceCode) { [self] in self.work(worker) }
    }

    private func work(_ worker: Worker) {
        let executor = asUnownedTaskExecutor()
        while true {
            let job: UnownedJob? = condition.withLock {
                while true {
                    if let job = state.pop() { return job }
                    if leaves(worker) { return nil }
                    state.idle += 1
                    condition.wait(timeout: nil)
                    state.idle -= 1
                }
            }
            guard let job else { return }
            worker.busy.store(true, ordering: .relaxed)
            // What the crash journal's signal handler matches against the lanes' tasks (a task's job is the
            // task): one thread-local store per job.
            sluice_crash_set_current_job(unsafeBitCast(job, to: UnsafeRawPointer.self))
            job.runSynchronously(on: executor)
            sluice_crash_set_current_job(nil)
            worker.jobsRun.add(1, ordering: .relaxed)
            worker.busy.store(false, ordering: .relaxed)
            if condition.withLock({ released(worker) }) { return }
        }
    }

    /// Whether an idle worker leaves: after shutdown. Call with the lock held.
    private func leaves(_ worker: Worker) -> Bool {
        guard state.shuttingDown else { return false }
        state.workers[worker.identifier] = nil
        return true
    }

    /// A worker that was blocked is free again: it leaves when enough others are not blocked. Returns
    /// whether it leaves. Call with the lock held.
    private func released(_ worker: Worker) -> Bool {
        guard state.blocked.removeValue(forKey: worker.identifier) != nil else { return false }
        let unblocked = state.workers.count - state.blocked.count
        let leaves = unblocked > threads
        if leaves { state.workers[worker.identifier] = nil }
        let report = Blocking(blocked: state.blocked.count, threads: state.workers.count, saturated: false)
        onBlocking(report)
        return leaves
    }

    // MARK: Monitor

    private func scheduleMonitor() {
        let interval = max(blockedAfter / 2, .milliseconds(10))
        monitor.withLock { timer in
            timer = clock.schedule(at: clock.now + interval) { [weak self] in self?.look() }
        }
    }

    /// Finds workers busy in the same job for three looks in a row (so for at least two intervals,
    /// `blockedAfter`), counts them blocked and starts workers in their place.
    private func look() {
        let report: Blocking? = condition.withLock {
            var seen: [Int: (jobs: UInt64, looks: Int)] = [:]
            var newlyBlocked = 0
            for (identifier, worker) in state.workers where worker.busy.load(ordering: .relaxed) {
                guard state.blocked[identifier] == nil else { continue }
                let jobs = worker.jobsRun.load(ordering: .relaxed)
                var looks = 1
                if let last = state.lastLook[identifier], last.jobs == jobs { looks = last.looks + 1 }
                if looks >= 3 {
                    state.blocked[identifier] = jobs
                    newlyBlocked += 1
                } else {
                    seen[identifier] = (jobs, looks)
                }
            }
            state.lastLook = seen
            guard newlyBlocked > 0 else { return nil }
            var saturated = false
            while state.workers.count - state.blocked.count < threads {
                guard state.workers.count < maximumThreads, !state.shuttingDown else {
                    saturated = true
                    break
                }
                startWorker()
            }
            return Blocking(blocked: state.blocked.count, threads: state.workers.count, saturated: saturated)
        }
        if let report { onBlocking(report) }
        let stopped = condition.withLock { state.shuttingDown }
        if !stopped { scheduleMonitor() }
    }
}
