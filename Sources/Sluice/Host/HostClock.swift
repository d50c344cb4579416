/// The time the host's timed logic runs on: restart backoffs, healthy-after, cooldown probes, revocation and
/// shutdown deadlines, the tick (stall detection, gauges). Production uses the continuous clock; tests drive
/// a manual one, so no test waits for these to pass in real time. Liveness (`/healthz`) and the handler
/// watchdog stay on real time: they exist to notice real time passing.
///
/// Implement it only to drive time in tests: `SluiceTesting`'s `ManualHostClock` is one.
public protocol HostClock: Sendable {
    /// The current time.
    var now: ContinuousClock.Instant { get }
    /// Sleeps until `deadline` on this clock; throws when the task is cancelled.
    func sleep(until deadline: ContinuousClock.Instant) async throws
}

/// The continuous clock, with wake-ups from Sluice's timer thread (not Swift's cooperative pool, which
/// blocking handler code can fill).
struct SystemHostClock: HostClock {
    var now: ContinuousClock.Instant { .now }
    func sleep(until deadline: ContinuousClock.Instant) async throws { try await TimerThread.shared.sleep(until: deadline) }
}
