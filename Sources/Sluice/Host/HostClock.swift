#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The time the host's timed logic runs on: restart backoffs, healthy-after, cooldown probes, revocation and
/// shutdown deadlines, the tick (stall detection, gauges), and in each shard's pipeline retry backoffs, batch
/// timeouts, the backpressure grace, rate limits and the drain deadline. Production uses the continuous clock;
/// tests drive a manual one, so no test waits for these to pass in real time. Liveness (`/healthz`), the handler
/// watchdog and the blocked-thread monitor stay on real time: they exist to notice real time passing.
///
/// Implement it only to drive time in tests: `SluiceTesting`'s `ManualHostClock` is one.
public protocol HostClock: Sendable {
    /// The current time.
    var now: ContinuousClock.Instant { get }
    /// The wall-clock time in milliseconds since the Unix epoch, for times written into records that other
    /// processes read (when a retried message is due). The system's real-time clock unless a test drives it.
    var wallMilliseconds: Int64 { get }
    /// Runs `action` once the clock reaches `deadline`, unless ``cancel(_:)`` comes first. Actions must be
    /// short (resume a continuation, flip a flag) and must not wait for a thread of Swift's cooperative pool:
    /// they are what wakes timed waits when handler code blocks that pool.
    func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> HostClockTimer
    /// Cancels a timer; false when it already fired or was cancelled.
    @discardableResult
    func cancel(_ timer: HostClockTimer) -> Bool
}

/// A timer of a ``HostClock``, for ``HostClock/cancel(_:)``.
public struct HostClockTimer: Hashable, Sendable {
    /// Unique among the timers of the clock that made it.
    public let identifier: UInt64

    public init(identifier: UInt64) { self.identifier = identifier }
}

extension HostClock {
    /// The system's real-time clock (`CLOCK_REALTIME`).
    public var wallMilliseconds: Int64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Int64(time.tv_sec) * 1000 + Int64(time.tv_nsec) / 1_000_000
    }

    /// Suspends until the clock reaches `deadline`. Throws `CancellationError` when the task is cancelled first.
    public func sleep(until deadline: ContinuousClock.Instant) async throws {
        let gate = SleepGate()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                gate.install(continuation)
                let timer = schedule(at: deadline) { gate.finish(nil) }
                if gate.setTimer(timer) == false { cancel(timer) }
            }
        } onCancel: {
            if let timer = gate.finish(CancellationError()) { cancel(timer) }
        }
    }
}

/// The continuous clock, with wake-ups from a timer thread of its own (not Swift's cooperative pool, which
/// blocking handler code can fill). A host makes one and hands it to what it runs; the thread ends when the
/// last holder lets go of the clock.
public final class SystemHostClock: HostClock {
    private let thread: TimerThread

    /// A clock with a timer thread called `name`.
    public init(name: String = "sluice-timers") { thread = TimerThread(name: name) }

    deinit { thread.shutdown() }

    public var now: ContinuousClock.Instant { .now }

    public func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void)
        -> HostClockTimer
    {
        HostClockTimer(identifier: thread.schedule(at: deadline, action))
    }

    @discardableResult
    public func cancel(_ timer: HostClockTimer) -> Bool { thread.cancel(timer.identifier) }
}
