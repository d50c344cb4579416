/// The consumer's close, from the first `close()` to the destroyed handle: what the owner thread does when,
/// decided without librdkafka, so every path is tested state by state.
///
/// A close commits what is stored, then leaves the group (`rd_kafka_consumer_close_queue`, served until
/// librdkafka says the consumer is closed), then destroys the handle. Two hazards shape it:
/// - A consumer that subscribed but has not had its first assignment is in its first join; closing or
///   destroying it while JoinGroup is answered and SyncGroup is not aborts the process (librdkafka < 2.3.0). The
///   final commit, and with it the leave, waits for the first assignment. A group that never answered JoinGroup
///   (rebalance protocol still `NONE`) holds no assignor state: once the callers' deadline passed, the handle is
///   destroyed without the leave handshake.
/// - The callers of `close()` wait at most `closeTimeout` from their first call: then they are released
///   (*detached*) and the owner finishes alone; the leave handshake itself is bounded by `closeTimeout` from its
///   start.
struct CloseStateMachine: Sendable, Equatable {
    enum Phase: Sendable, Equatable {
        case running
        /// `close()` was called; the final commit has not started (it waits for the first assignment).
        case closeRequested
        /// The final commit is out.
        case committing
        /// `rd_kafka_consumer_close_queue` was called: the queue is served until the consumer is closed or the
        /// deadline passes.
        case leaving(deadline: ContinuousClock.Instant)
        /// The handle is destroyed.
        case finished
    }

    /// Why the handle is destroyed.
    enum Destroy: Sendable, Equatable {
        /// The consumer left its group: destroy with nothing more to do.
        case left
        /// It never joined its group (no JoinGroup answer by the callers' deadline): nothing to leave.
        case neverJoined
        /// The leave handshake did not finish by its deadline.
        case leaveTimedOut
        /// `rd_kafka_consumer_close_queue` refused.
        case leaveRefused

        /// Whether librdkafka's close (the leave handshake) still runs at destroy.
        var handshake: Bool { self == .left }
    }

    enum Action: Sendable, Equatable {
        /// Commit the revoked partitions whose owners have not released them: they are shutting down too.
        case releaseRevocations
        /// Start the final commit of every stored offset, bounded by `timeout`.
        case startFinalCommit(timeout: Duration)
        /// Release the callers of `close()` and end every sequence; the owner goes on alone.
        case detach(firstAssignmentSeen: Bool)
        /// Destroy the handle.
        case destroy(Destroy)
    }

    private(set) var phase = Phase.running
    private var hasSubscribed = false
    private var firstAssignmentSeen = false
    /// When the callers of `close()` are released, whatever the consumer is still doing.
    private var callerDeadline: ContinuousClock.Instant?
    /// The callers were released; later callers return at once.
    private(set) var detached = false
    /// When the final commit and the leave handshake must be done by (`closeTimeout` after they start).
    private var leaveDeadline: ContinuousClock.Instant?
    let closeTimeout: Duration

    init(closeTimeout: Duration) { self.closeTimeout = closeTimeout }

    /// Running: periodic commits, revocation commits and fetcher restarts go on.
    var isRunning: Bool { phase == .running }
    var isFinished: Bool { phase == .finished }

    // MARK: Events

    mutating func subscribed() { hasSubscribed = true }

    mutating func assigned() { firstAssignmentSeen = true }

    /// A caller asked to close. Returns whether it waits (false: the callers were released already; it
    /// returns at once).
    mutating func closeRequested(now: ContinuousClock.Instant) -> Bool {
        if detached { return false }
        if phase == .running {
            phase = .closeRequested
            callerDeadline = now + closeTimeout
        }
        return true
    }

    /// The owner's turn of its loop at `now`. `neverJoined` says whether the group never answered the
    /// JoinGroup (asked only when it matters); `consumerClosed` whether librdkafka finished the leave.
    mutating func tick(
        now: ContinuousClock.Instant, neverJoined: @autoclosure () -> Bool, consumerClosed: @autoclosure () -> Bool
    ) -> [Action] {
        var actions: [Action] = []
        if phase == .closeRequested {
            actions.append(.releaseRevocations)
            if !hasSubscribed || firstAssignmentSeen {
                leaveDeadline = now + closeTimeout
                phase = .committing
                actions.append(.startFinalCommit(timeout: closeTimeout / 2))
            } else if let callerDeadline, now >= callerDeadline, neverJoined() {
                phase = .finished
                actions.append(.destroy(.neverJoined))
                return actions
            }
        }
        if !detached, let callerDeadline, now >= callerDeadline {
            detached = true
            actions.append(.detach(firstAssignmentSeen: firstAssignmentSeen))
        }
        if case .leaving(let deadline) = phase {
            if consumerClosed() {
                phase = .finished
                actions.append(.destroy(.left))
            } else if now >= deadline {
                phase = .finished
                actions.append(.destroy(.leaveTimedOut))
            }
        }
        return actions
    }

    /// The final commit completed (or failed). Returns whether to call `rd_kafka_consumer_close_queue` now.
    func finalCommitCompleted() -> Bool { phase == .committing }

    /// `rd_kafka_consumer_close_queue` returned: nil when it started the leave, else the destroy to do.
    mutating func leaveStarted(now: ContinuousClock.Instant, refused: Bool) -> Action? {
        guard phase == .committing else { return nil }
        if refused {
            phase = .finished
            return .destroy(.leaveRefused)
        }
        phase = .leaving(deadline: leaveDeadline ?? now + closeTimeout)
        return nil
    }

    /// The handle was destroyed for any reason (a fatal path of the owner's own).
    mutating func destroyed() { phase = .finished }

    /// The next moment the close needs the owner to look again, if any: the callers' deadline, and while
    /// leaving every 10 ms (librdkafka says it is closed only when asked).
    func nextDeadline(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        var next: ContinuousClock.Instant?
        if !detached, let callerDeadline { next = callerDeadline }
        if case .leaving(let deadline) = phase { next = min(next ?? deadline, deadline, now + .milliseconds(10)) }
        return next
    }
}
