import SluiceTesting
import Testing

@testable import SluiceKafka

@Suite("The consumer's close, state by state")
struct CloseStateMachineTests {
    let start = ContinuousClock.now
    let timeout = Duration.seconds(10)

    /// A machine that subscribed (and saw its first assignment when `assigned`), then was asked to close at `start`.
    func closing(subscribed: Bool = true, assigned: Bool) -> CloseStateMachine {
        var machine = CloseStateMachine(closeTimeout: timeout)
        if subscribed { machine.subscribed() }
        if assigned { machine.assigned() }
        let waits = machine.closeRequested(now: start)
        #expect(waits)
        return machine
    }

    @Test(
        "a consumer that never subscribed commits and leaves at once: final commit, leave, destroy with the handshake")
    func neverSubscribed() {
        var machine = closing(subscribed: false, assigned: false)
        #expect(machine.phase == .closeRequested)
        #expect(
            machine.tick(now: start, neverJoined: false, consumerClosed: false) == [
                .releaseRevocations, .startFinalCommit(timeout: .seconds(5)),
            ])
        #expect(machine.phase == .committing)
        #expect(machine.finalCommitCompleted())
        #expect(machine.leaveStarted(now: start + .seconds(1), refused: false) == nil)
        #expect(
            machine.phase == .leaving(deadline: start + timeout), "the leave is bounded from when the commit started")
        #expect(machine.tick(now: start + .seconds(2), neverJoined: false, consumerClosed: false) == [])
        #expect(machine.tick(now: start + .seconds(3), neverJoined: false, consumerClosed: true) == [.destroy(.left)])
        #expect(machine.isFinished)
    }

    @Test("in its first join the final commit waits for the first assignment (closing then aborts librdkafka < 2.3)")
    func waitsForFirstAssignment() {
        var machine = closing(assigned: false)
        #expect(
            machine.tick(now: start + .seconds(1), neverJoined: false, consumerClosed: false) == [.releaseRevocations])
        #expect(machine.phase == .closeRequested)
        machine.assigned()
        #expect(
            machine.tick(now: start + .seconds(2), neverJoined: false, consumerClosed: false) == [
                .releaseRevocations, .startFinalCommit(timeout: .seconds(5)),
            ])
        #expect(machine.phase == .committing)
    }

    @Test(
        "a group that never answered JoinGroup: at the callers' deadline the handle is destroyed without the leave; not a moment before"
    )
    func neverJoined() {
        var machine = closing(assigned: false)
        var asked = 0
        func neverJoined() -> Bool {
            asked += 1
            return true
        }
        #expect(
            machine.tick(now: start + timeout - .nanoseconds(1), neverJoined: neverJoined(), consumerClosed: false) == [
                .releaseRevocations
            ])
        #expect(asked == 0, "librdkafka is asked only once the deadline passed")
        #expect(
            machine.tick(now: start + timeout, neverJoined: neverJoined(), consumerClosed: false) == [
                .releaseRevocations, .destroy(.neverJoined),
            ])
        #expect(asked == 1)
        #expect(machine.isFinished)
        #expect(!CloseStateMachine.Destroy.neverJoined.handshake)
    }

    @Test(
        "joined but not yet assigned at the callers' deadline: the callers are released, the owner closes once the assignment comes"
    )
    func detachedDuringFirstRebalance() {
        var machine = closing(assigned: false)
        #expect(machine.nextDeadline(now: start) == start + timeout)
        #expect(
            machine.tick(now: start + timeout, neverJoined: false, consumerClosed: false) == [
                .releaseRevocations, .detach(firstAssignmentSeen: false),
            ])
        #expect(machine.detached)
        #expect(machine.nextDeadline(now: start + timeout) == nil, "nothing timed until the assignment")
        let laterWaits = machine.closeRequested(now: start + timeout)
        #expect(!laterWaits, "a later caller returns at once")
        machine.assigned()
        let later = start + .seconds(60)
        #expect(
            machine.tick(now: later, neverJoined: false, consumerClosed: false) == [
                .releaseRevocations, .startFinalCommit(timeout: .seconds(5)),
            ])
        #expect(machine.finalCommitCompleted())
        #expect(machine.leaveStarted(now: later, refused: false) == nil)
        #expect(machine.phase == .leaving(deadline: later + timeout))
        #expect(
            machine.tick(now: later + timeout, neverJoined: false, consumerClosed: false) == [.destroy(.leaveTimedOut)])
    }

    @Test(
        "a slow leave: the callers go at their deadline, the handle is destroyed without the handshake at the leave's")
    func slowLeave() {
        var machine = closing(assigned: true)
        _ = machine.tick(now: start + .seconds(1), neverJoined: false, consumerClosed: false)
        #expect(machine.finalCommitCompleted())
        #expect(machine.leaveStarted(now: start + .seconds(2), refused: false) == nil)
        #expect(
            machine.nextDeadline(now: start + .seconds(2)) == start + .seconds(2) + .milliseconds(10),
            "polled every 10 ms while leaving")
        #expect(
            machine.tick(now: start + timeout, neverJoined: false, consumerClosed: false) == [
                .detach(firstAssignmentSeen: true)
            ])
        #expect(
            machine.tick(now: start + .seconds(11) - .nanoseconds(1), neverJoined: false, consumerClosed: false) == [])
        #expect(
            machine.tick(now: start + .seconds(11), neverJoined: false, consumerClosed: false) == [
                .destroy(.leaveTimedOut)
            ])
    }

    @Test("a refused leave destroys at once without the handshake; a second close() while closing only waits")
    func refusedLeave() {
        var machine = closing(assigned: true)
        _ = machine.tick(now: start, neverJoined: false, consumerClosed: false)
        let secondWaits = machine.closeRequested(now: start + .seconds(1))
        #expect(secondWaits)
        #expect(machine.phase == .committing)
        #expect(machine.finalCommitCompleted())
        #expect(machine.leaveStarted(now: start, refused: true) == .destroy(.leaveRefused))
        #expect(machine.isFinished)
    }

    @Test("while running: no deadline, a stray final-commit result starts no leave, nothing happens on ticks")
    func running() {
        var machine = CloseStateMachine(closeTimeout: timeout)
        machine.subscribed()
        #expect(machine.isRunning)
        #expect(machine.nextDeadline(now: start) == nil)
        #expect(!machine.finalCommitCompleted())
        #expect(machine.leaveStarted(now: start, refused: false) == nil)
        #expect(machine.tick(now: start + .seconds(3_600), neverJoined: true, consumerClosed: true) == [])
        #expect(machine.isRunning)
    }

    /// Random sequences of what the owner thread sees, as it feeds them: whatever the order, a close commits at
    /// most once and never during the first join, the callers are released by their deadline, the handle is
    /// destroyed once, and a leave never outlasts its deadline.
    @Test("random sequences of events keep the close's promises")
    func randomSequences() {
        for seed in UInt64(0)..<2_000 {
            var random = InputMutator.Generator(state: seed)
            var machine = CloseStateMachine(closeTimeout: timeout)
            var now = start
            var subscribed = false
            var assigned = false
            var closeAskedAt: ContinuousClock.Instant?
            var commits = 0
            var detaches = 0
            var destroys = 0
            var commitOut = false
            var leaveStartedAt: ContinuousClock.Instant?
            var commitStartedAt: ContinuousClock.Instant?
            for _ in 0..<40 where !machine.isFinished {
                switch random.next() % 6 {
                case 0:
                    machine.subscribed()
                    subscribed = true
                case 1:
                    machine.assigned()
                    assigned = true
                case 2:
                    let waits = machine.closeRequested(now: now)
                    #expect(waits == (detaches == 0), "seed \(seed): only callers after the release return at once")
                    if closeAskedAt == nil { closeAskedAt = now }
                case 3 where commitOut:
                    commitOut = false
                    #expect(machine.finalCommitCompleted(), "seed \(seed)")
                    let refused = random.next() % 5 == 0
                    if let action = machine.leaveStarted(now: now, refused: refused) {
                        #expect(refused && action == .destroy(.leaveRefused), "seed \(seed)")
                        destroys += 1
                    } else {
                        leaveStartedAt = now
                    }
                default:
                    now = now + .milliseconds(Int64(random.next() % 4_000))
                    let closed = random.next() % 7 == 0
                    for action in machine.tick(now: now, neverJoined: random.next() % 2 == 0, consumerClosed: closed) {
                        switch action {
                        case .releaseRevocations:
                            #expect(closeAskedAt != nil, "seed \(seed)")
                        case .startFinalCommit:
                            commits += 1
                            commitOut = true
                            commitStartedAt = now
                            #expect(!subscribed || assigned, "seed \(seed): no final commit during the first join")
                        case .detach:
                            detaches += 1
                            #expect(now >= closeAskedAt! + timeout, "seed \(seed): callers are not released early")
                        case .destroy(let why):
                            destroys += 1
                            switch why {
                            case .left: #expect(closed && leaveStartedAt != nil, "seed \(seed)")
                            case .leaveTimedOut: #expect(now >= commitStartedAt! + timeout, "seed \(seed)")
                            case .neverJoined:
                                #expect(subscribed && !assigned && now >= closeAskedAt! + timeout, "seed \(seed)")
                            case .leaveRefused: Issue.record("seed \(seed): a refusal comes from leaveStarted")
                            }
                        }
                    }
                    if let closeAskedAt, now >= closeAskedAt + timeout {
                        #expect(
                            detaches == 1 || machine.isFinished,
                            "seed \(seed): the callers are released by their deadline")
                    }
                    if let commitStartedAt, leaveStartedAt != nil, now >= commitStartedAt + timeout {
                        #expect(machine.isFinished, "seed \(seed): a leave ends by its deadline")
                    }
                }
                #expect(commits <= 1 && detaches <= 1 && destroys <= 1, "seed \(seed)")
                #expect(machine.isFinished == (destroys == 1), "seed \(seed)")
            }
        }
    }
}
