import Testing

@testable import Sluice

@Suite("WorkQueue timed waits", .timeLimit(.minutes(1)))
struct WorkQueueTests {
    @Test("an element pushed during a timed wait is returned; none before the deadline gives nil")
    func elementOrDeadline() async throws {
        let queue = WorkQueue<Int>()
        let waiter = Task { await queue.next(before: .now + .seconds(10)) }
        try await Task.sleep(for: .milliseconds(20))
        queue.push(7)
        #expect(await waiter.value == 7)
        let started = ContinuousClock.now
        #expect(await queue.next(before: .now + .milliseconds(30)) == nil)
        #expect(ContinuousClock.now - started >= .milliseconds(30))
    }

    /// Deadlines a few microseconds away make the timer fire before, during and after the waiter registers:
    /// every wait ends, and an element pushed afterwards is still there.
    @Test("deadlines that pass while the wait registers neither hang nor lose elements")
    func deadlineRaces() async {
        let queue = WorkQueue<Int>()
        for round in 0..<2_000 {
            #expect(await queue.next(before: .now + .microseconds(round % 50)) == nil)
        }
        queue.push(1)
        #expect(await queue.next(before: .now + .seconds(1)) == 1)
        queue.finish()
        #expect(await queue.next() == nil)
    }
}
