import Sluice
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
    private struct Sleeper {
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    private let state: Mutex<(now: ContinuousClock.Instant, sleepers: [UInt64: Sleeper], next: UInt64)>

    /// A clock that starts at `start` and moves only when told.
    public init(start: ContinuousClock.Instant = .now) { state = Mutex((start, [:], 0)) }

    /// The clock's time.
    public var now: ContinuousClock.Instant { state.withLock { $0.now } }

    /// How many sleeps are waiting (timers, the tick, deadlines).
    public var sleeping: Int { state.withLock { $0.sleepers.count } }

    /// Sleeps until the clock is moved to `deadline` or past it; throws when the task is cancelled.
    public func sleep(until deadline: ContinuousClock.Instant) async throws {
        let identifier = state.withLock { state -> UInt64 in
            state.next += 1
            return state.next
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let result = state.withLock { state -> Result<Void, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if deadline <= state.now { return .success(()) }
                    state.sleepers[identifier] = Sleeper(deadline: deadline, continuation: continuation)
                    return nil
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            state.withLock { $0.sleepers.removeValue(forKey: identifier) }?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves the clock on and wakes every sleeper whose deadline came.
    public func advance(by duration: Duration) {
        let due = state.withLock { state -> [Sleeper] in
            state.now = state.now + duration
            let now = state.now
            let due = state.sleepers.filter { $0.value.deadline <= now }
            for key in due.keys { state.sleepers[key] = nil }
            return Array(due.values)
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// Moves the clock `duration` on (a second when not given) and waits until `host`'s supervisor loop handled
    /// the tick that causes, so what came due (a restart, a trip, a probe) has been acted on.
    public func tick(_ host: SluiceHost, by duration: Duration = .seconds(1), timeout: Duration = .seconds(30)) async throws {
        let before = host.ticks
        advance(by: duration)
        guard await eventually(timeout: timeout, { host.ticks > before }) else { throw TickNotHandled(waited: timeout) }
    }

    /// The host's supervisor loop did not handle a tick: it is not running, or it is stuck.
    public struct TickNotHandled: Error, CustomStringConvertible {
        /// How long the test waited.
        public let waited: Duration
        /// What happened, for the test's failure.
        public var description: String { "the host's supervisor loop handled no tick within \(waited) after the clock moved" }
    }
}
