import Synchronization
import Testing

@testable import Sluice

@Suite("Beacon waits", .timeLimit(.minutes(1)))
struct BeaconTests {
    @Test("a notification wakes a waiter whose condition now holds; a deadline ends a wait that never holds")
    func notificationOrDeadline() async throws {
        let beacon = Beacon()
        let flag = Atomic<Bool>(false)
        let waiter = Task { await beacon.waitUntil(deadline: .now + .seconds(10)) { flag.load(ordering: .acquiring) } }
        try await Task.sleep(for: .milliseconds(20))
        flag.store(true, ordering: .releasing)
        beacon.notify()
        #expect(await waiter.value)
        let started = ContinuousClock.now
        #expect(await beacon.waitUntil(deadline: .now + .milliseconds(30)) { false } == false)
        #expect(ContinuousClock.now - started >= .milliseconds(30))
    }

    @Test("recheck re-evaluates a time-dependent condition without any notification")
    func recheck() async {
        let beacon = Beacon()
        let until = ContinuousClock.now + .milliseconds(50)
        #expect(await beacon.waitUntil(recheck: .milliseconds(10)) { ContinuousClock.now >= until })
    }

    /// Wake-up times a few microseconds away fire before, during and after the waiter registers: every
    /// wait ends.
    @Test("wake-up times that pass while the wait registers do not hang it")
    func deadlineRaces() async {
        let beacon = Beacon()
        for round in 0..<2_000 {
            #expect(await beacon.waitUntil(deadline: .now + .microseconds(round % 50)) { false } == false)
        }
    }
}
