/// The time the host's timed logic runs on: restart backoffs, healthy-after, cooldown probes, revocation and
/// shutdown deadlines, the tick (stall detection, gauges). Production uses the continuous clock; tests drive
/// a manual one, so no test waits for these to pass in real time. Liveness (`/healthz`) and the handler
/// watchdog stay on real time: they exist to notice real time passing.
protocol HostClock: Sendable {
    var now: ContinuousClock.Instant { get }
    /// Sleeps until `deadline` on this clock; throws when the task is cancelled.
    func sleep(until deadline: ContinuousClock.Instant) async throws
}

/// The continuous clock.
struct SystemHostClock: HostClock {
    var now: ContinuousClock.Instant { .now }
    func sleep(until deadline: ContinuousClock.Instant) async throws { try await Task.sleep(until: deadline) }
}
