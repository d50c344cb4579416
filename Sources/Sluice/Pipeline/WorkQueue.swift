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
    }

    private let state = Mutex(State())

    /// Adds an element; hands it straight to a waiting consumer if there is one.
    func push(_ element: Element) {
        let waiter: Waiter? = state.withLock { state in
            if let waiter = state.waiters.popFirst() { return waiter }
            state.elements.append(element)
            return nil
        }
        waiter?.continuation.resume(returning: element)
    }

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
        let identifier: UInt64 = state.withLock { state in
            state.nextIdentifier += 1
            return state.nextIdentifier
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate: Element?? = state.withLock { state in
                    if let element = state.elements.popFirst() { return .some(element) }
                    if state.finished || Task.isCancelled { return .some(nil) }
                    state.waiters.append(Waiter(identifier: identifier, continuation: continuation))
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter: Waiter? = state.withLock { state in
                guard let index = state.waiters.firstIndex(where: { $0.identifier == identifier }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: nil)
        }
    }

    /// The next element if one arrives before `deadline`. An element that arrives exactly as the deadline
    /// passes is not lost: it is returned.
    func next<C: Clock>(before deadline: C.Instant, clock: C) async -> Element? {
        if let element = state.withLock({ $0.elements.popFirst() }) { return element }
        return await withTaskGroup(of: Element?.self) { group in
            group.addTask { await self.next() }
            group.addTask {
                try? await clock.sleep(until: deadline, tolerance: nil)
                return nil
            }
            var result: Element?
            for await outcome in group {
                if let outcome { result = outcome }
                group.cancelAll()
            }
            return result
        }
    }
}
