import SluiceKafka
import Testing

@testable import Sluice

/// A point on a manual test clock: seconds since its start.
struct ManualInstant: InstantProtocol, CustomStringConvertible {
    var offset: Duration
    static func at(_ seconds: Double) -> ManualInstant { ManualInstant(offset: .milliseconds(Int64(seconds * 1000))) }
    func advanced(by duration: Duration) -> ManualInstant { ManualInstant(offset: offset + duration) }
    func duration(to other: ManualInstant) -> Duration { other.offset - offset }
    static func < (lhs: ManualInstant, rhs: ManualInstant) -> Bool { lhs.offset < rhs.offset }
    var description: String { "t+\(offset)" }
}

typealias Machine = ShardSupervisor.StateMachine<ManualInstant>

@Suite("Shard state machine", .timeLimit(.minutes(2)))
struct ShardStateMachineTests {
    let fuse = BreakerPolicy(
        restartBackoff: .init(initial: .seconds(1), maximum: .seconds(8), jitter: 0.1),
        trip: .init(crashes: 3, within: .seconds(60)), cooldown: .seconds(100), healthyAfter: .seconds(30))

    /// A machine assigned with its flag on and running since t=0.
    func running(_ policy: BreakerPolicy) -> Machine {
        var machine = Machine(policy: policy, flagOn: true)
        _ = machine.assigned()
        _ = machine.started(now: .at(0))
        return machine
    }

    @Test("assignment: flag on starts the pipeline, flag off pauses before any fetch")
    func assignment() {
        var on = Machine(policy: fuse, flagOn: true)
        let start = on.assigned()
        #expect(start.startPipeline?.seekToCommitted == false)
        #expect(on.state == .starting(attempt: 0, probe: false))
        #expect(
            on.started(now: .at(0)) == Machine.Actions(wakeAt: .at(30), events: [.started(attempt: 0, probe: false)]))
        #expect(on.state == .running(attempt: 0, since: .at(0), probe: false))

        var off = Machine(policy: fuse, flagOn: false)
        #expect(off.assigned() == Machine.Actions(events: [.stopped(.flag)]))
        #expect(off.state == .off)
        #expect(off.pauseReasons == [.flag])
    }

    @Test("a crash pauses (breaker), commits, and backs off; the timer restarts from the committed offset")
    func crashBackoffRestart() {
        var machine = running(fuse)
        let crash = machine.crashed(now: .at(5), reason: "boom", jitter: 0)
        #expect(machine.pauseReasons == [.breaker])
        #expect(crash.commit)
        #expect(crash.wakeAt == .at(6))
        #expect(crash.events == [.crashed(reason: "boom", attempt: 1), .backingOff(until: .at(6))])
        #expect(machine.state == .backingOff(attempt: 1, until: .at(6)))
        #expect(machine.timerFired(now: .at(5.5)) == Machine.Actions(wakeAt: .at(6)), "early timer re-arms")
        let restart = machine.timerFired(now: .at(6))
        #expect(machine.pauseReasons == [])
        #expect(restart.startPipeline?.seekToCommitted == true)
        _ = machine.started(now: .at(6))
        // The second crash backs off twice as long, with jitter on top.
        let second = machine.crashed(now: .at(7), reason: "boom", jitter: 1)
        #expect(second.wakeAt == .at(7 + 2.2))
        #expect(machine.attempt == 2)
    }

    @Test("crashes beyond the threshold within the window trip; outside the window they do not")
    func tripWindow() {
        var machine = running(fuse)
        for (index, time) in [1.0, 70.0, 140.0].enumerated() {
            _ = machine.crashed(now: .at(time), reason: "x", jitter: 0)
            guard case .backingOff = machine.state else {
                Issue.record("crash \(index) spread over > 60 s must not trip: \(machine.state)")
                return
            }
            _ = machine.timerFired(now: .at(time + 30))
            _ = machine.started(now: .at(time + 30))
        }
        _ = machine.crashed(now: .at(171), reason: "x", jitter: 0)
        _ = machine.timerFired(now: .at(190))
        _ = machine.started(now: .at(190))
        let trip = machine.crashed(now: .at(191), reason: "poison", jitter: 0)
        #expect(machine.state == .tripped(since: .at(191), reason: "poison", cooldown: .seconds(100)))
        // Five crashes since the shard was last healthy; three of them within 60 s.
        #expect(trip.events == [.crashed(reason: "poison", attempt: 5), .tripped(reason: "poison")])
        #expect(trip.wakeAt == .at(291))
    }

    @Test("latched: one crash trips, and only a flag cycle or a reset brings it back")
    func latched() {
        var machine = running(.latched)
        let trip = machine.crashed(now: .at(1), reason: "bad", jitter: 0)
        #expect(trip.wakeAt == nil, "no cooldown: no probe")
        #expect(machine.timerFired(now: .at(100_000)) == Machine.Actions())
        #expect(machine.flagChanged(on: true) == Machine.Actions(), "on while on is not a cycle")
        #expect(machine.flagChanged(on: false) == Machine.Actions(events: [.stopped(.flag)]))
        #expect(machine.state == .off)
        #expect(machine.pauseReasons == [.flag])
        let back = machine.flagChanged(on: true)
        #expect(machine.pauseReasons == [])
        #expect(back.startPipeline?.seekToCommitted == true)
        _ = machine.started(now: .at(200))
        _ = machine.crashed(now: .at(201), reason: "bad", jitter: 0)
        let reset = machine.reset(now: .at(202))
        #expect(reset.events == [.reset])
        #expect(machine.pauseReasons == [])
        #expect(machine.state == .starting(attempt: 0, probe: false))
    }

    @Test("cooldown: one half-open probe; a crash during it trips again with the cooldown doubled")
    func cooldownProbe() {
        var machine = running(fuse)
        for time in [1.0, 3.0, 6.0] {
            _ = machine.crashed(now: .at(time), reason: "x", jitter: 0)
            if case .backingOff(_, let until) = machine.state {
                _ = machine.timerFired(now: until)
                _ = machine.started(now: until)
            }
        }
        #expect(machine.state == .tripped(since: .at(6), reason: "x", cooldown: .seconds(100)))
        #expect(machine.timerFired(now: .at(50)) == Machine.Actions(wakeAt: .at(106)))
        let probe = machine.timerFired(now: .at(106))
        #expect(probe.startPipeline?.probe == true)
        #expect(machine.started(now: .at(106)).events == [.started(attempt: 0, probe: true)])
        let again = machine.crashed(now: .at(107), reason: "still", jitter: 0)
        #expect(machine.state == .tripped(since: .at(107), reason: "still", cooldown: .seconds(200)))
        #expect(again.wakeAt == .at(307))
        // A probe that runs healthy closes the breaker and the cooldown returns to the policy's.
        _ = machine.timerFired(now: .at(307))
        _ = machine.started(now: .at(307))
        #expect(machine.timerFired(now: .at(337)).events == [.healthy])
        #expect(machine.state == .running(attempt: 0, since: .at(307), probe: false))
    }

    @Test("healthyAfter resets the attempt count")
    func healthyResets() {
        var machine = running(fuse)
        _ = machine.crashed(now: .at(1), reason: "x", jitter: 0)
        _ = machine.timerFired(now: .at(2))
        _ = machine.started(now: .at(2))
        #expect(machine.attempt == 1)
        #expect(machine.timerFired(now: .at(20)) == Machine.Actions(wakeAt: .at(32)))
        #expect(machine.timerFired(now: .at(32)).events == [.healthy])
        #expect(machine.attempt == 0)
    }

    @Test("flag off drains, commits and stops; on while draining restarts after the drain")
    func flagDrain() {
        var machine = running(fuse)
        #expect(machine.flagChanged(on: false) == Machine.Actions(stopPipeline: true))
        #expect(machine.state == .draining(target: .off, attempt: 0))
        #expect(machine.pauseReasons == [.flag])
        #expect(machine.flagChanged(on: false) == Machine.Actions(), "flag off while draining changes nothing")
        #expect(machine.drained() == Machine.Actions(commit: true, events: [.stopped(.flag)]))
        #expect(machine.state == .off)

        var flapping = running(fuse)
        _ = flapping.flagChanged(on: false)
        _ = flapping.flagChanged(on: true)
        let restart = flapping.drained()
        #expect(flapping.pauseReasons == [])
        #expect(restart.startPipeline?.seekToCommitted == true)
    }

    @Test("a flag cycle during backoff stops the backoff, and on again starts at once with a clean history")
    func flagCycleDuringBackoff() {
        var machine = running(fuse)
        _ = machine.crashed(now: .at(1), reason: "x", jitter: 0)
        #expect(machine.flagChanged(on: false) == Machine.Actions(events: [.stopped(.flag)]))
        #expect(machine.pauseReasons == [.flag])
        #expect(machine.timerFired(now: .at(2)) == Machine.Actions(), "the backoff timer no longer restarts it")
        let on = machine.flagChanged(on: true)
        #expect(on.startPipeline?.seekToCommitted == true)
        #expect(machine.state == .starting(attempt: 0, probe: false))
    }

    @Test("revocation: running shards drain then stop; tripped and off shards stop at once")
    func revocation() {
        var running = running(fuse)
        #expect(running.stop() == Machine.Actions(stopPipeline: true))
        #expect(running.drained() == Machine.Actions(commit: true, events: [.stopped(.released)]))
        #expect(running.state == .stopped)

        var tripped = self.running(.latched)
        _ = tripped.crashed(now: .at(1), reason: "x", jitter: 0)
        #expect(tripped.stop() == Machine.Actions(commit: true, events: [.stopped(.released)]))
        #expect(tripped.state == .stopped)
        #expect(tripped.flagChanged(on: false) == Machine.Actions(), "a stopped shard ignores flags")
    }

    @Test("reset while running forgets the crashes; a crash while draining for a flag ends off")
    func resetAndCrashWhileDraining() {
        var machine = running(fuse)
        _ = machine.crashed(now: .at(1), reason: "x", jitter: 0)
        _ = machine.timerFired(now: .at(2))
        _ = machine.started(now: .at(2))
        #expect(machine.reset(now: .at(3)).events == [.reset])
        #expect(machine.attempt == 0)

        _ = machine.flagChanged(on: false)
        let crash = machine.crashed(now: .at(4), reason: "late", jitter: 0)
        #expect(crash.events == [.crashed(reason: "late", attempt: 1), .stopped(.flag)])
        #expect(machine.state == .off)
    }

    @Test("the backoff preset never trips")
    func backoffForever() {
        var machine = running(.backoff)
        var now = 0.0
        for _ in 0..<20 {
            now += 1
            _ = machine.crashed(now: .at(now), reason: "x", jitter: 0)
            guard case .backingOff(_, let until) = machine.state else {
                Issue.record("tripped: \(machine.state)")
                return
            }
            now = Double(until.offset.components.seconds)
            _ = machine.timerFired(now: until)
            _ = machine.started(now: until)
        }
        #expect(machine.attempt == 20)
    }
}
