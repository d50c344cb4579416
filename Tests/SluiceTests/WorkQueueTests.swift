import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

@Suite("WorkQueue timed waits", .timeLimit(.minutes(1)))
struct WorkQueueTests {
    @Test("an element pushed during a timed wait is returned; none before the deadline on the queue's clock gives nil")
    func elementOrDeadline() async throws {
        let clock = ManualHostClock()
        let queue = WorkQueue<Int>(clock: clock)
        let waiter = Task { await queue.next(before: clock.now + .seconds(10)) }
        #expect(await eventually { queue.depth.waiting == 1 })
        queue.push(7)
        #expect(await waiter.value == 7)
        #expect(await eventually { clock.sleeping == 0 }, "its timer was cancelled")

        let ended = Atomic<Bool>(false)
        let timed = Task {
            defer { ended.store(true, ordering: .releasing) }
            return await queue.next(before: clock.now + .milliseconds(30))
        }
        #expect(await eventually { queue.depth.waiting == 1 && clock.sleeping == 1 })
        clock.advance(by: .milliseconds(29))
        let endedEarly = ended.load(ordering: .acquiring)
        #expect(queue.depth.waiting == 1 && !endedEarly, "1 ms before its deadline the wait goes on")
        clock.advance(by: .milliseconds(1))
        #expect(await timed.value == nil)
    }

    /// Deadlines a few microseconds away on a real timer thread fire before, during and after the waiter
    /// registers: every wait ends, and an element pushed afterwards is still there. 2,000 waits by 20 waiters at
    /// once (one after another, each waited for the timer thread to be scheduled: too long on a loaded machine).
    @Test("deadlines that pass while the wait registers neither hang nor lose elements")
    func deadlineRaces() async {
        let clock = SystemHostClock(name: "test-timers")
        let queue = WorkQueue<Int>(clock: clock)
        let empty = await withTaskGroup(of: Int.self) { group in
            for waiter in 0..<20 {
                group.addTask {
                    var empty = 0
                    for round in 0..<100
                    where await queue.next(before: clock.now + .microseconds((waiter + round) % 50)) == nil {
                        empty += 1
                    }
                    return empty
                }
            }
            return await group.reduce(0, +)
        }
        #expect(empty == 2_000)
        queue.push(1)
        #expect(await queue.next(before: clock.now + .seconds(1)) == 1)
        queue.finish()
        #expect(await queue.next() == nil)
    }
}
