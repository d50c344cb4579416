import Synchronization

/// Wakes every task waiting for a change of some shared state. Tasks wait with ``waitUntil(deadline:_:)``,
/// which re-checks their condition after each ``notify()``; a notification between a check and the
/// wait is not lost (a generation count guards it).
final class Beacon: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var nextIdentifier: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
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

    /// Waits until `condition` holds (true) or `deadline` passes or the task is cancelled (false).
    /// `condition` also runs every `recheck`, for conditions that depend on time.
    func waitUntil(
        deadline: ContinuousClock.Instant? = nil,
        recheck: Duration? = nil,
        _ condition: () -> Bool
    ) async -> Bool {
        while true {
            let generation = state.withLock { $0.generation }
            if condition() { return true }
            if Task.isCancelled { return false }
            let now = ContinuousClock.now
            if let deadline, now >= deadline { return false }
            var wake = deadline
            if let recheck { wake = min(wake ?? now + recheck, now + recheck) }
            await wait(after: generation, until: wake)
        }
    }

    private func wait(after generation: UInt64, until wake: ContinuousClock.Instant?) async {
        guard let wake else {
            await waitForNotification(after: generation)
            return
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.waitForNotification(after: generation) }
            group.addTask { try? await Task.sleep(until: wake, clock: .continuous) }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForNotification(after generation: UInt64) async {
        let identifier = state.withLock { state -> UInt64 in
            state.nextIdentifier += 1
            return state.nextIdentifier
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let registered = state.withLock { state -> Bool in
                    guard state.generation == generation, !Task.isCancelled else { return false }
                    state.waiters[identifier] = continuation
                    return true
                }
                if !registered { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: identifier) }
            waiter?.resume()
        }
    }
}
