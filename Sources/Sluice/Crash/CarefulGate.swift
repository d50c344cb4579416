import Synchronization

/// Lets one suspect of an unattributed death (docs/architecture.md §12) into a handler call at a time, across
/// every shard of a host: if the process dies again while exactly one suspect runs, the next start knows it
/// was that one. A host owns one and hands it to each of its pipelines (tests give pipelines their own).
///
/// A turn ends when its holder releases it, or after `holdFor` (a handler call that never returns crashes
/// its shard at `handlerTimeout`; the next suspect must not wait for it forever).
final class CarefulGate: Sendable {
    private struct State {
        var holder: UInt64?
        var expires = ContinuousClock.now
        var issued: UInt64 = 0
    }

    private let state = Mutex(State())
    /// Notified when a turn is released: waiters try again at once rather than on a timer.
    private let released = Beacon()
    /// Real time: a turn is held by a handler call, whose watchdog runs on real time.
    private let clock: any HostClock

    init(clock: any HostClock) { self.clock = clock }

    /// Waits for the turn; nil when `giveUp` says so first (checked at least every 50 ms) or the task is
    /// cancelled.
    func acquire(holdFor limit: Duration, giveUp: () -> Bool) async -> UInt64? {
        var token: UInt64?
        let acquired = await released.waitUntil(deadline: nil, recheck: .milliseconds(50), on: clock) {
            let now = clock.now
            token = state.withLock { state -> UInt64? in
                guard state.holder == nil || now >= state.expires else { return nil }
                state.issued += 1
                state.holder = state.issued
                state.expires = now + limit
                return state.issued
            }
            return token != nil || giveUp()
        }
        guard acquired, let token else { return nil }
        return token
    }

    func release(_ token: UInt64) {
        let ended = state.withLock { state -> Bool in
            guard state.holder == token else { return false }
            state.holder = nil
            return true
        }
        if ended { released.notify() }
    }
}
