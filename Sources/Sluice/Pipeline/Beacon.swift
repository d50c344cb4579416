import Synchronization

/// Wakes every task waiting for a change of some shared state. Tasks wait with ``waitUntil(deadline:_:)``,
/// which re-checks their condition after each ``notify()``; a notification between a check and the
/// wait is not lost (a generation count guards it). A timed wait names the clock its deadline and rechecks
/// are on: a shard's backoffs run on the host's clock, its watchdog on real time.
final class Beacon: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var nextIdentifier: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        /// Waits with a wake-up time in progress; true for one whose time came before it registered.
        var timedWaits: [UInt64: Bool] = [:]
    }

    private let state = Mutex(State())

    /// Wakes every waiter.
    func notify() {
        let waiters = state.withLock { state in
            state.generation += 1
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Waits until `condition` holds (true) or the task is cancelled (false).
    func waitUntil(_ condition: () -> Bool) async -> Bool {
        while true {
            let generation = state.withLock { $0.generation }
            if condition() { return true }
            if Task.isCancelled { return false }
            await wait(after: generation, until: nil)
        }
    }

    /// Waits until `condition` holds (true) or `deadline` on `clock` passes or the task is cancelled (false).
    /// `condition` also runs every `recheck` on `clock`, for conditions that depend on time.
    func waitUntil(
        deadline: ContinuousClock.Instant?,
        recheck: Duration? = nil,
        on clock: any HostClock,
        _ condition: () -> Bool
    ) async -> Bool {
        while true {
            let generation = state.withLock { $0.generation }
            if condition() { return true }
            if Task.isCancelled { return false }
            let now = clock.now
            if let deadline, now >= deadline { return false }
            var wake = deadline
            if let recheck { wake = min(wake ?? now + recheck, now + recheck) }
            await wait(after: generation, until: wake.map { ($0, clock) })
        }
    }

    /// Waits until `condition` holds (true) or the task is cancelled (false), rechecking it after a
    /// notification and after `recheckAfter()` (asked before each wait): for a condition whose next
    /// change in time is known.
    func waitUntil(recheckAfter next: () -> Duration, on clock: any HostClock, _ condition: () -> Bool) async -> Bool {
        while true {
            let generation = state.withLock { $0.generation }
            if condition() { return true }
            if Task.isCancelled { return false }
            await wait(after: generation, until: (clock.now + next(), clock))
        }
    }

    /// Waits for a notification after `generation`, or until `wake` on its clock: one timer, cancelled if a
    /// notification comes first.
    private func wait(after generation: UInt64, until wake: (ContinuousClock.Instant, any HostClock)?) async {
        let identifier = state.withLock { state -> UInt64 in
            state.nextIdentifier += 1
            if wake != nil { state.timedWaits[state.nextIdentifier] = false }
            return state.nextIdentifier
        }
        // On the clock's timers (a thread of their own in production): a watchdog wait must end even when
        // handlers block every pool thread.
        let timer = wake.map { instant, clock in (clock.schedule(at: instant) { self.timeUp(identifier) }, clock) }
        defer {
            if let (timer, clock) = timer { clock.cancel(timer) }
            if timer != nil { state.withLock { _ = $0.timedWaits.removeValue(forKey: identifier) } }
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let registered = state.withLock { state -> Bool in
                    guard state.generation == generation, !Task.isCancelled, state.timedWaits[identifier] != true else {
                        return false
                    }
                    state.waiters[identifier] = continuation
                    return true
                }
                if !registered { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: identifier) }?.resume()
        }
    }

    /// Ends the timed wait `identifier`: now if it is waiting, or as soon as it registers.
    private func timeUp(_ identifier: UInt64) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.timedWaits[identifier] != nil else { return nil }
            if let waiter = state.waiters.removeValue(forKey: identifier) { return waiter }
            state.timedWaits[identifier] = true
            return nil
        }
        waiter?.resume()
    }
}
