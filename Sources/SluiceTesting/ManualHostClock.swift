import Foundation
import Sluice
import SluiceKafka
import Synchronization

/// A `HostClock` a test moves by hand: sleepers wake when ``advance(by:)`` passes their deadline (or
/// their task is cancelled), never because real time passed.
///
/// Give it to a host (`SluiceHost(configuration:logger:clock:)`) to test timed behaviour (a crash-looping
/// shard's restart backoff, its trip, the cooldown probe, healthy-after) without waiting for it:
///
/// ```swift
/// let clock = ManualHostClock()
/// let host = SluiceHost(configuration: configuration, logger: logger, clock: clock)
/// // ... the handler crashes; the shard waits for its backoff
/// try await clock.tick(host, by: .seconds(5))   // the backoff passed: the shard restarts
/// ```
///
/// Liveness (`/healthz`) and the handler watchdog stay on real time: they exist to notice real time passing.
public final class ManualHostClock: HostClock {
    private struct Timer {
        let deadline: ContinuousClock.Instant
        let action: @Sendable () -> Void
    }

    private let state: Mutex<(now: ContinuousClock.Instant, timers: [UInt64: Timer], next: UInt64)>
    private let start: ContinuousClock.Instant
    private let wallStart: Int64

    /// A clock that starts at `start` and moves only when told; its wall-clock time starts at the system's
    /// real time now (`wallStart`, in milliseconds since the Unix epoch, when given) and moves with it.
    public init(start: ContinuousClock.Instant = .now, wallStart: Int64? = nil) {
        state = Mutex((start, [:], 0))
        self.start = start
        self.wallStart = wallStart ?? Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
    }

    /// The clock's time.
    public var now: ContinuousClock.Instant { state.withLock { $0.now } }

    /// The wall-clock time: where it started, plus how far the clock was moved.
    public var wallMilliseconds: Int64 {
        wallStart + (now - start).milliseconds
    }

    /// How many timers are waiting (sleeps, timed waits, deadlines).
    public var sleeping: Int { state.withLock { $0.timers.count } }

    /// The earliest deadline of a waiting timer, if any.
    public var nextDeadline: ContinuousClock.Instant? { state.withLock { $0.timers.values.map(\.deadline).min() } }

    public func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void)
        -> HostClockTimer
    {
        let (identifier, due) = state.withLock { state -> (UInt64, Bool) in
            state.next += 1
            if deadline <= state.now { return (state.next, true) }
            state.timers[state.next] = Timer(deadline: deadline, action: action)
            return (state.next, false)
        }
        if due { action() }
        return HostClockTimer(identifier: identifier)
    }

    @discardableResult
    public func cancel(_ timer: HostClockTimer) -> Bool {
        state.withLock { $0.timers.removeValue(forKey: timer.identifier) } != nil
    }

    /// Moves the clock on and runs every timer whose deadline came, earliest first.
    public func advance(by duration: Duration) {
        let due = state.withLock { state -> [Timer] in
            state.now = state.now + duration
            let now = state.now
            let due = state.timers.filter { $0.value.deadline <= now }
            for key in due.keys { state.timers[key] = nil }
            return due.values.sorted { $0.deadline < $1.deadline }
        }
        for timer in due { timer.action() }
    }

    /// Moves the clock `duration` on (a second when not given) and waits until `host`'s supervisor loop handled
    /// the tick that causes, so what came due (a restart, a trip, a probe) has been acted on.
    public func tick(_ host: SluiceHost, by duration: Duration = .seconds(1), timeout: Duration = .seconds(30))
        async throws
    {
        let before = host.ticks
        advance(by: duration)
        guard await eventually(timeout: timeout, { host.ticks > before }) else { throw TickNotHandled(waited: timeout) }
    }

    /// The host's supervisor loop did not handle a tick: it is not running, or it is stuck.
    public struct TickNotHandled: Error, CustomStringConvertible {
        /// How long the test waited.
        public let waited: Duration
        /// What happened, for the test's failure.
        public var description: String {
            "the host's supervisor loop handled no tick within \(waited) after the clock moved"
        }
    }
}
