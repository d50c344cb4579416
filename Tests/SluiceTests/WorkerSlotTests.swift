import SluiceTesting
import Testing

@testable import Sluice

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite("A worker slot: restarted at once, then with a backoff; tripped; killed when silent; drained on stop")
struct WorkerSlotTests {
    let start = ContinuousClock.now
    var policy: WorkerSlot.Policy {
        var policy = WorkerSlot.Policy()
        policy.restartBackoff = BreakerPolicy.RestartBackoff(initial: .seconds(1), maximum: .seconds(8), jitter: 0)
        policy.tripAfter = 4
        policy.healthyAfter = .seconds(60)
        policy.heartbeatTimeout = .seconds(10)
        return policy
    }

    func running(pid: Int32 = 100) -> WorkerSlot {
        var slot = WorkerSlot(index: 0, policy: policy)
        #expect(slot.start(now: start) == .spawn)
        #expect(slot.spawned(pid: pid, now: start) == .none)
        return slot
    }

    @Test("a worker that dies is replaced at once; the next deaths in a row wait 1 s, 2 s; the fourth trips")
    func deathsInARow() {
        var slot = running()
        #expect(slot.exited(pid: 100, .signal(SIGILL), now: start + .seconds(1)) == .spawn, "at once")
        #expect(slot.restarts == 1)
        _ = slot.spawned(pid: 101, now: start + .seconds(1))
        #expect(slot.exited(pid: 101, .signal(SIGILL), now: start + .seconds(2)) == .none)
        #expect(slot.state == .backingOff(until: start + .seconds(3)))
        #expect(slot.tick(now: start + .milliseconds(2_999)) == .none, "not before the backoff ends")
        #expect(slot.tick(now: start + .seconds(3)) == .spawn)
        _ = slot.spawned(pid: 102, now: start + .seconds(3))
        #expect(slot.exited(pid: 102, .signal(SIGILL), now: start + .seconds(4)) == .none)
        #expect(slot.state == .backingOff(until: start + .seconds(6)), "2 s: the backoff doubles")
        _ = slot.tick(now: start + .seconds(6))
        _ = slot.spawned(pid: 103, now: start + .seconds(6))
        guard case .tripped = slot.exited(pid: 103, .signal(SIGILL), now: start + .seconds(7)) else {
            Issue.record("the fourth death in a row trips the slot: \(slot.state)")
            return
        }
        #expect(slot.isFinal && slot.restarts == 3 && slot.tick(now: start + .seconds(100)) == .none)
    }

    @Test("a worker that ran past healthyAfter ends the run of deaths: its death is replaced at once again")
    func healthyRunResets() {
        var slot = running()
        _ = slot.exited(pid: 100, .signal(SIGILL), now: start + .seconds(1))
        _ = slot.spawned(pid: 101, now: start + .seconds(1))
        #expect(slot.exited(pid: 101, .signal(SIGILL), now: start + .seconds(61)) == .spawn)
        #expect(slot.deathsInARow == 1)
    }

    @Test("a worker silent past heartbeatTimeout is killed, and replaced once it exited; beats keep it")
    func silentWorker() {
        var slot = running()
        slot.beat(now: start + .seconds(5))
        #expect(slot.tick(now: start + .seconds(15)) == .none, "10 s after its last beat, not more")
        #expect(slot.tick(now: start + .seconds(15) + .milliseconds(1)) == .kill(pid: 100))
        #expect(slot.tick(now: start + .seconds(16)) == .none, "killed once")
        #expect(slot.exited(pid: 100, .signal(SIGILL), now: start + .seconds(16)) == .spawn)
    }

    @Test("a stop drains the running worker and ends with its exit; a slot without one is done at once")
    func stop() {
        var slot = running()
        #expect(slot.stop() == .terminate(pid: 100))
        #expect(!slot.isFinal && slot.stop() == .none)
        #expect(slot.exited(pid: 100, .code(0), now: start) == .none)
        #expect(slot.state == .stopped(cleanly: true))
        var waiting = running()
        _ = waiting.exited(pid: 100, .signal(SIGILL), now: start)
        _ = waiting.spawned(pid: 101, now: start)
        _ = waiting.exited(pid: 101, .signal(SIGILL), now: start)
        #expect(waiting.stop() == .none && waiting.state == .stopped(cleanly: true), "backing off: nothing to drain")
        var starting = WorkerSlot(index: 1, policy: policy)
        _ = starting.start(now: start)
        _ = starting.stop()
        #expect(starting.spawned(pid: 7, now: start) == .terminate(pid: 7), "started during the stop: drained at once")
        #expect(starting.exited(pid: 7, .signal(SIGILL), now: start) == .none)
        #expect(starting.state == .stopped(cleanly: false))
    }

    @Test(
        "after a stop: exit 0, or the stop's SIGTERM before the worker could handle it, is clean; anything else is not")
    func stopExits() {
        for (exit, clean) in [
            (WorkerSlot.Exit.code(0), true), (.signal(SIGTERM), true), (.code(1), false), (.signal(SIGKILL), false),
            (.signal(SIGILL), false),
        ] {
            var slot = running()
            _ = slot.stop()
            _ = slot.exited(pid: 100, exit, now: start)
            #expect(slot.state == .stopped(cleanly: clean), "\(exit)")
        }
        var running = running()
        #expect(running.exited(pid: 100, .signal(SIGTERM), now: start) == .spawn, "a SIGTERM without a stop is a death")
    }

    @Test("an exit of another process, or a spawn that failed, is told apart")
    func strayEvents() {
        var slot = running()
        #expect(slot.exited(pid: 999, .signal(SIGILL), now: start) == .none, "not its worker")
        #expect(slot.pid == 100)
        var failing = WorkerSlot(index: 2, policy: policy)
        _ = failing.start(now: start)
        #expect(failing.exited(pid: 0, .notStarted, now: start) == .spawn, "could not start: tried again")
    }
}
