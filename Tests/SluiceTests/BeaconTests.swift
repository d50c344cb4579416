import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

@Suite("Beacon waits", .timeLimit(.minutes(1)))
struct BeaconTests {
    @Test(
        "a notification wakes a waiter whose condition now holds; a deadline on the wait's clock ends a wait that never holds"
    )
    func notificationOrDeadline() async throws {
        let clock = ManualHostClock()
        let beacon = Beacon()
        let flag = Atomic<Bool>(false)
        let waiter = Task {
            await beacon.waitUntil(deadline: clock.now + .seconds(10), on: clock) { flag.load(ordering: .acquiring) }
        }
        #expect(await eventually { clock.sleeping == 1 })
        flag.store(true, ordering: .releasing)
        beacon.notify()
        #expect(await waiter.value)
        #expect(clock.sleeping == 0, "its timer was cancelled")

        let ended = Atomic<Bool>(false)
        let timed = Task {
            defer { ended.store(true, ordering: .releasing) }
            return await beacon.waitUntil(deadline: clock.now + .milliseconds(30), on: clock) { false }
        }
        #expect(await eventually { clock.sleeping == 1 })
        clock.advance(by: .milliseconds(29))
        beacon.notify()  // a notification re-checks the condition, which still does not hold
        #expect(await eventually { clock.sleeping == 1 })
        let endedEarly = ended.load(ordering: .acquiring)
        #expect(!endedEarly, "1 ms before its deadline the wait goes on")
        clock.advance(by: .milliseconds(1))
        #expect(await timed.value == false)
    }

    @Test("recheck re-evaluates a time-dependent condition on the wait's clock, without any notification")
    func recheck() async {
        let clock = ManualHostClock()
        let beacon = Beacon()
        let until = clock.now + .milliseconds(50)
        let checks = Atomic<Int>(0)
        let waiter = Task {
            await beacon.waitUntil(deadline: nil, recheck: .milliseconds(10), on: clock) {
                checks.add(1, ordering: .relaxed)
                return clock.now >= until
            }
        }
        for step in 1...5 {
            let checked = await eventually { clock.sleeping == 1 && checks.load(ordering: .relaxed) == step }
            #expect(checked)
            clock.advance(by: .milliseconds(10))
        }
        #expect(await waiter.value)
        let checked = checks.load(ordering: .relaxed)
        #expect(checked == 6, "once at the start and once per 10 ms")
    }

    /// Wake-up times a few microseconds away on a real timer thread fire before, during and after the waiter
    /// registers: every wait ends. 2,000 waits by 20 waiters at once: one after another, each waited for the
    /// timer thread to be scheduled, and on a loaded machine 2,000 of those outlasted the time limit.
    @Test("wake-up times that pass while the wait registers do not hang it")
    func deadlineRaces() async {
        let clock = SystemHostClock(name: "test-timers")
        let beacon = Beacon()
        let ended = await withTaskGroup(of: Int.self) { group in
            for waiter in 0..<20 {
                group.addTask {
                    var ended = 0
                    for round in 0..<100
                    where await beacon.waitUntil(
                        deadline: clock.now + .microseconds((waiter + round) % 50), on: clock, { false }) == false
                    {
                        ended += 1
                    }
                    return ended
                }
            }
            return await group.reduce(0, +)
        }
        #expect(ended == 2_000)
    }
}
