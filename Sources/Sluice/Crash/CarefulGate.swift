import Synchronization

/// One suspect's handler call at a time in the whole process (docs/architecture.md §12): after a death Sluice could
/// not attribute, the messages then in handler calls are handled alone, so a second death names the
/// culprit. A turn held longer than its limit (a call abandoned past `handlerTimeout`) passes on.
final class CarefulGate: Sendable {
    static let shared = CarefulGate()

    private struct State {
        var holder: UInt64?
        var expires = ContinuousClock.now
        var issued: UInt64 = 0
    }

    private let state = Mutex(State())

    /// Waits for the turn (polling: this runs only while suspects are handled); nil when `giveUp` says so
    /// first.
    func acquire(holdFor limit: Duration, giveUp: () -> Bool) async -> UInt64? {
        while true {
            let now = ContinuousClock.now
            let token = state.withLock { state -> UInt64? in
                guard state.holder == nil || now >= state.expires else { return nil }
                state.issued += 1
                state.holder = state.issued
                state.expires = now + limit
                return state.issued
            }
            if let token { return token }
            if giveUp() { return nil }
            try? await TimerThread.shared.sleep(until: now + .milliseconds(5))
        }
    }

    func release(_ token: UInt64) {
        state.withLock { state in
            if state.holder == token { state.holder = nil }
        }
    }
}
