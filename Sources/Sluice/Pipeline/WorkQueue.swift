import DequeModule
import Synchronization

/// An unbounded multi-consumer FIFO between a shard's dispatcher and its lanes. Bounded in practice by
/// the shard's `maxInFlight`, which the dispatcher enforces before it pushes.
final class WorkQueue<Element: Sendable>: Sendable {
    private struct Waiter {
        let identifier: UInt64
        let continuation: CheckedContinuation<Element?, Never>
    }

    private struct State {
        var elements: Deque<Element> = []
        var waiters: Deque<Waiter> = []
        var finished = false
        var nextIdentifier: UInt64 = 0
        /// Timed waits in progress; true for one whose deadline passed before it registered as a waiter.
        var timedWaits: [UInt64: Bool] = [:]

        mutating func removeWaiter(_ identifier: UInt64) -> Waiter? {
            guard let index = waiters.firstIndex(where: { $0.identifier == identifier }) else { return nil }
            return waiters.remove(at: index)
        }
    }

    private let state = Mutex(State())
    /// The clock `next(before:)` deadlines are on.
    private let clock: any HostClock

    init(clock: any HostClock) { self.clock = clock }

    /// Adds an element; hands it straight to a waiting consumer if there is one.
    func push(_ element: Element) {
        let waiter: Waiter? = state.withLock { state in
            if let waiter = state.waiters.popFirst() { return waiter }
            state.elements.append(element)
            return nil
        }
        waiter?.continuation.resume(returning: element)
    }

    /// Elements queued and consumers waiting, for a stall report.
    var depth: (queued: Int, waiting: Int) { state.withLock { ($0.elements.count, $0.waiters.count) } }

    /// No more elements will come; consumers get the rest, then nil.
    func finish() {
        let waiters = state.withLock { state in
            state.finished = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume(returning: nil) }
    }

    /// Drops the queued elements and returns them.
    func drain() -> [Element] {
        state.withLock { state in
            defer { state.elements.removeAll() }
            return Array(state.elements)
        }
    }

    /// The next element, or nil once finished and empty, or when the calling task is cancelled.
    func next() async -> Element? {
        await next(identifier: newIdentifier())
    }

    /// The next element if one arrives before `deadline`, else nil (also once finished and empty, or when
    /// the calling task is cancelled). An element pushed as the deadline passes is either returned or
    /// left queued, never lost.
    ///
    /// One timer per wait, cancelled when an element comes first; no wait (and no timer) when an
    /// element is already queued.
    func next(before deadline: ContinuousClock.Instant) async -> Element? {
        if let element = state.withLock({ $0.elements.popFirst() }) { return element }
        guard clock.now < deadline else { return nil }
        let identifier = state.withLock { state in
            state.nextIdentifier += 1
            state.timedWaits[state.nextIdentifier] = false
            return state.nextIdentifier
        }
        let timer = clock.schedule(at: deadline) { self.expire(identifier) }
        defer {
            clock.cancel(timer)
            state.withLock { _ = $0.timedWaits.removeValue(forKey: identifier) }
        }
        return await next(identifier: identifier)
    }

    private func newIdentifier() -> UInt64 {
        state.withLock { state in
            state.nextIdentifier += 1
            return state.nextIdentifier
        }
    }

    /// Ends the wait `identifier` with nil: now if it is waiting, or as soon as it registers.
    private func expire(_ identifier: UInt64) {
        let waiter: Waiter? = state.withLock { state in
            guard state.timedWaits[identifier] != nil else { return nil }
            guard let waiter = state.removeWaiter(identifier) else {
                state.timedWaits[identifier] = true
                return nil
            }
            return waiter
        }
        waiter?.continuation.resume(returning: nil)
    }

    private func next(identifier: UInt64) async -> Element? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate: Element?? = state.withLock { state in
                    if let element = state.elements.popFirst() { return .some(element) }
                    if state.finished || Task.isCancelled || state.timedWaits[identifier] == true { return .some(nil) }
                    state.waiters.append(Waiter(identifier: identifier, continuation: continuation))
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            state.withLock { $0.removeWaiter(identifier) }?.continuation.resume(returning: nil)
        }
    }
}
