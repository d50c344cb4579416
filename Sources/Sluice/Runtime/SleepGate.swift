import Synchronization

/// The one continuation of a ``HostClock/sleep(until:)``, resumed once by the timer or by cancellation,
/// whichever comes first (cancellation may come before the continuation exists).
final class SleepGate: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Void, any Error>?
        var outcome: (any Error)??
        var timer: HostClockTimer?
    }

    private let state = Mutex(State())

    func install(_ continuation: CheckedContinuation<Void, any Error>) {
        let earlyOutcome: (any Error)?? = state.withLock { state in
            if let outcome = state.outcome { return .some(outcome) }
            state.continuation = continuation
            return nil
        }
        if let earlyOutcome { resume(continuation, with: earlyOutcome) }
    }

    /// Records the timer; false when the sleep already ended (the timer is to be cancelled).
    func setTimer(_ timer: HostClockTimer) -> Bool {
        state.withLock { state in
            guard state.outcome == nil else { return false }
            state.timer = timer
            return true
        }
    }

    /// Ends the sleep with `error` (nil: the deadline came). Returns the timer to cancel, if any.
    @discardableResult
    func finish(_ error: (any Error)?) -> HostClockTimer? {
        let (continuation, timer) = state.withLock {
            state -> (CheckedContinuation<Void, any Error>?, HostClockTimer?) in
            guard state.outcome == nil else { return (nil, nil) }
            state.outcome = .some(error)
            defer { state.continuation = nil }
            return (state.continuation, state.timer)
        }
        if let continuation { resume(continuation, with: error) }
        return timer
    }

    private func resume(_ continuation: CheckedContinuation<Void, any Error>, with error: (any Error)?) {
        if let error { continuation.resume(throwing: error) } else { continuation.resume() }
    }
}
