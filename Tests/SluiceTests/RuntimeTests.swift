import Foundation
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

@Suite("Sluice's own threads: timers and the handler executor", .timeLimit(.minutes(1)))
struct RuntimeTests {
    @Test("timers fire in deadline order, a cancelled one never fires, and a sleep ends at its deadline")
    func timersFireInOrder() async throws {
        let timers = SystemHostClock(name: "test-timers")
        let fired = Locked<[Int]>([])
        let start = ContinuousClock.now
        // Scheduled out of order; one cancelled.
        for (index, delay) in [(2, 30), (0, 10), (3, 40), (1, 20)] {
            _ = timers.schedule(at: start + .milliseconds(delay)) { fired.withLock { $0.append(index) } }
        }
        let cancelled = timers.schedule(at: start + .milliseconds(15)) { fired.withLock { $0.append(99) } }
        #expect(timers.cancel(cancelled))
        try await timers.sleep(until: start + .milliseconds(60))
        let woke = ContinuousClock.now
        #expect(woke >= start + .milliseconds(60), "not before its deadline")
        try await waitUntil("four fired") { fired.value.count == 4 }
        #expect(fired.value == [0, 1, 2, 3])
        #expect(!timers.cancel(cancelled), "already gone")
    }

    @Test("a sleep cancelled before or during the wait throws CancellationError")
    func cancelledSleep() async throws {
        let timers = SystemHostClock(name: "test-timers")
        let during = Task { try await timers.sleep(until: .now + .seconds(3600)) }
        during.cancel()
        await #expect(throws: CancellationError.self) { try await during.value }
        let before = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await timers.sleep(until: .now + .seconds(3600))
        }
        await #expect(throws: CancellationError.self) { try await before.value }
    }

    /// The kernel's name of the calling thread.
    static func threadName() -> String {
        let path = "/proc/thread-self/comm"
        return (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            ?? ""
    }

    @Test(
        "a job that holds its thread is reported blocked, another thread runs the queue, and the pool shrinks back after"
    )
    func blockedWorkerIsReplaced() async throws {
        let reports = Locked<[ThreadPoolExecutor.Blocking]>([])
        let executor = ThreadPoolExecutor(
            name: "test-pool", threads: 1, maximumThreads: 2, blockedAfter: .milliseconds(100), clock: SystemHostClock()
        ) { report in
            reports.withLock { $0.append(report) }
        }
        defer { executor.shutdown() }
        let release = DispatchSemaphore(value: 0)
        let blocker = Task(executorPreference: executor) { _ = release.wait(timeout: .now() + 60) }
        // With the only thread held, this runs once the monitor started another.
        let second = Task(executorPreference: executor) { RuntimeTests.threadName() }
        let secondThread = await second.value
        #expect(secondThread.hasPrefix("test-pool-"))
        #expect(reports.value.first == ThreadPoolExecutor.Blocking(blocked: 1, threads: 2, saturated: false))
        #expect(executor.census == (threads: 2, blocked: 1))
        release.signal()
        await blocker.value
        try await waitUntil("back to one thread") { executor.census == (threads: 1, blocked: 0) }
        #expect(reports.value.last == ThreadPoolExecutor.Blocking(blocked: 0, threads: 1, saturated: false))
    }

    @Test("at the maximum, a blocked worker is reported saturated and the queue waits for a thread to return")
    func saturated() async throws {
        let reports = Locked<[ThreadPoolExecutor.Blocking]>([])
        let executor = ThreadPoolExecutor(
            name: "test-pool", threads: 1, maximumThreads: 1, blockedAfter: .milliseconds(100), clock: SystemHostClock()
        ) { report in
            reports.withLock { $0.append(report) }
        }
        defer { executor.shutdown() }
        let release = DispatchSemaphore(value: 0)
        let blocker = Task(executorPreference: executor) { _ = release.wait(timeout: .now() + 60) }
        let ran = Locked(false)
        let waiting = Task(executorPreference: executor) { ran.withLock { $0 = true } }
        try await waitUntil("reported saturated") { reports.value.contains { $0.saturated } }
        #expect(!ran.value, "no thread to run it while the only one is held")
        release.signal()
        await blocker.value
        await waiting.value
        #expect(ran.value)
    }
}
