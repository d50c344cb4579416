import Testing

@testable import Sluice

@Suite("When a host publishes its status")
struct StatusCadenceTests {
    let start = ContinuousClock.now
    let running = StatusCadence.Said(applied: 10, shards: ["orders/0": "running"], reasons: ["orders/0": []])

    @Test("the first look publishes; an unchanged status waits for the 5 s heartbeat")
    func heartbeat() {
        var cadence = StatusCadence()
        #expect(cadence.due(running, now: start))
        cadence.published(running, at: start)
        #expect(!cadence.due(running, now: start + .seconds(5) - .milliseconds(1)))
        #expect(cadence.due(running, now: start + .seconds(5)))
    }

    @Test("a moved applied position is published at once (writers wait for it)")
    func appliedAtOnce() {
        var cadence = StatusCadence()
        cadence.published(running, at: start)
        var moved = running
        moved.applied = 11
        #expect(cadence.due(moved, now: start))
    }

    @Test("a changed state or pause reason at most once a second")
    func changesThrottled() {
        var cadence = StatusCadence()
        cadence.published(running, at: start)
        var draining = running
        draining.shards["orders/0"] = "draining"
        #expect(!cadence.due(draining, now: start + .milliseconds(999)))
        #expect(cadence.due(draining, now: start + .seconds(1)))
        cadence.published(draining, at: start + .seconds(1))
        var paused = draining
        paused.reasons["orders/0"] = ["flag"]
        #expect(!cadence.due(paused, now: start + .milliseconds(1_500)))
        #expect(cadence.due(paused, now: start + .seconds(2)))
    }
}
