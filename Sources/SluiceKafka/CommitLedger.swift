/// The consumer's commits in flight and the ones to come, decided without librdkafka: who waits for which
/// commit, when each times out, when the next periodic commit is due and how a failing one backs off.
///
/// Callers of `commit()` that ask while the callers' commit is out wait together for the next one, which starts
/// when that one completes: a commit that starts after they asked (more may be stored by then). So a thousand
/// shards stopping at once cost two commits, not a thousand. `Caller` is what answers a caller (a continuation
/// in the consumer; anything in a test).
struct CommitLedger<Caller> {
    enum Purpose {
        /// Callers of `commit()`, answered together.
        case callers([Caller])
        /// The commit before revoked partitions are released (its revocation's identifier).
        case revocation(UInt64)
        /// The final commit of a close.
        case close
        /// The periodic commit of what was stored.
        case periodic
    }

    /// What a completed commit was for, and what follows from it.
    enum Completion {
        /// Answer these callers (with the commit's error, if any).
        case callers([Caller])
        /// A periodic commit; `retryIn`: it failed and the next is brought forward to then.
        case periodic(retryIn: Duration?)
        case revocation(UInt64)
        case close
    }

    private struct Outstanding {
        let purpose: Purpose
        let deadline: ContinuousClock.Instant
    }

    private var outstanding: [UInt64: Outstanding] = [:]
    /// The callers' commit that is out, if one is.
    private var callersCommit: UInt64?
    /// Callers that asked while ``callersCommit`` was out.
    private var callersWaiting: [Caller] = []
    /// Periodic commits that failed in a row (reset by a success): the retry backoff grows with it.
    private(set) var periodicFailures = 0
    /// When the next periodic commit is due.
    private(set) var nextPeriodic: ContinuousClock.Instant
    private var nextIdentifier: UInt64 = 1
    let commitInterval: Duration

    init(commitInterval: Duration, now: ContinuousClock.Instant) {
        self.commitInterval = commitInterval
        nextPeriodic = now + commitInterval
    }

    /// Whether a periodic commit is out.
    var periodicOut: Bool {
        outstanding.values.contains {
            if case .periodic = $0.purpose { return true }
            return false
        }
    }

    /// Commits out now.
    var inFlight: Int { outstanding.count }

    // MARK: Events

    /// A caller of `commit()` asked.
    mutating func callerAsked(_ caller: Caller) { callersWaiting.append(caller) }

    /// The callers waiting, to share one commit to start now; nil while the callers' commit is out (its
    /// completion starts the next) or nobody waits.
    mutating func takeWaitingCallers() -> [Caller]? {
        guard callersCommit == nil, !callersWaiting.isEmpty else { return nil }
        defer { callersWaiting.removeAll() }
        return callersWaiting
    }

    /// A commit for `purpose` is sent now; it times out after `timeout`. Returns its identifier (what librdkafka
    /// hands back with its result).
    mutating func started(_ purpose: Purpose, now: ContinuousClock.Instant, timeout: Duration) -> UInt64 {
        let identifier = nextIdentifier
        nextIdentifier += 1
        outstanding[identifier] = Outstanding(purpose: purpose, deadline: now + timeout)
        if case .callers = purpose { callersCommit = identifier }
        return identifier
    }

    /// The commit `identifier` completed (`failed`: with an error, a timeout included). Nil for one not out
    /// (completed already, or never started).
    mutating func completed(_ identifier: UInt64, failed: Bool, now: ContinuousClock.Instant) -> Completion? {
        guard let commit = outstanding.removeValue(forKey: identifier) else { return nil }
        switch commit.purpose {
        case .callers(let callers):
            if callersCommit == identifier { callersCommit = nil }
            return .callers(callers)
        case .periodic:
            guard failed else {
                periodicFailures = 0
                return .periodic(retryIn: nil)
            }
            // What was stored is still to be committed: try again soon, backing off while it fails.
            periodicFailures += 1
            let backoff = min(.milliseconds(100) * (1 << min(periodicFailures - 1, 10)), commitInterval)
            nextPeriodic = min(nextPeriodic, now + backoff)
            return .periodic(retryIn: backoff)
        case .revocation(let revocation):
            return .revocation(revocation)
        case .close:
            return .close
        }
    }

    /// The commits past their deadline at `now`, oldest first: each is to be completed as timed out.
    func expired(now: ContinuousClock.Instant) -> [UInt64] {
        outstanding.filter { now >= $0.value.deadline }.keys.sorted()
    }

    /// Whether the periodic commit is due at `now`; if so the next is scheduled a `commitInterval` later.
    mutating func periodicDue(now: ContinuousClock.Instant) -> Bool {
        guard now >= nextPeriodic else { return false }
        nextPeriodic = now + commitInterval
        return true
    }

    /// The next moment a commit needs the owner: a deadline, and the periodic commit when it may start.
    func nextDeadline(periodicAllowed: Bool) -> ContinuousClock.Instant? {
        var next = periodicAllowed ? nextPeriodic : nil
        for commit in outstanding.values { next = min(next ?? commit.deadline, commit.deadline) }
        return next
    }

    /// The consumer is destroyed: every caller still waiting, in or out of a commit, to be answered that it
    /// closed. Nothing is out afterwards.
    mutating func abandonAll() -> [Caller] {
        var callers = callersWaiting
        for (_, commit) in outstanding.sorted(by: { $0.key < $1.key }) {
            if case .callers(let waiting) = commit.purpose { callers += waiting }
        }
        outstanding.removeAll()
        callersWaiting.removeAll()
        callersCommit = nil
        return callers
    }
}
