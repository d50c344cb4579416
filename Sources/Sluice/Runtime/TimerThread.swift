/// Fires actions at deadlines from a thread of its own, so Sluice's timers (the handler watchdog, batch
/// timeouts, the supervisor's breaker and stall timers) go off even when every thread of Swift's
/// cooperative pool is blocked by handler code. `Task.sleep` cannot promise that: its wake-up is queued to
/// that pool.
///
/// Actions run on the timer thread and must be short (resume a continuation, flip a flag). Owned by a
/// ``SystemHostClock``; its thread ends at ``shutdown()``, dropping the timers not yet due.
final class TimerThread: Sendable {
    private struct Entry {
        let deadline: ContinuousClock.Instant
        let identifier: UInt64
    }

    private struct State {
        var nextIdentifier: UInt64 = 0
        /// A binary min-heap on deadline; cancelled entries are dropped when they reach the top.
        var heap: [Entry] = []
        var actions: [UInt64: @Sendable () -> Void] = [:]
        var stopped = false

        mutating func push(_ entry: Entry) {
            heap.append(entry)
            var child = heap.count - 1
            while child > 0 {
                let parent = (child - 1) / 2
                guard heap[child].deadline < heap[parent].deadline else { break }
                heap.swapAt(child, parent)
                child = parent
            }
        }

        mutating func popTop() {
            heap.swapAt(0, heap.count - 1)
            heap.removeLast()
            var parent = 0
            while true {
                let left = 2 * parent + 1
                let right = left + 1
                var smallest = parent
                if left < heap.count, heap[left].deadline < heap[smallest].deadline { smallest = left }
                if right < heap.count, heap[right].deadline < heap[smallest].deadline { smallest = right }
                if smallest == parent { return }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
    }

    private let condition = MonotonicCondition()
    nonisolated(unsafe) private var state = State()

    init(name: String) {
        startThread(named: name) { [self] in self.run() }
    }

    /// Runs `action` on the timer thread at `deadline` unless cancelled first. Returns the timer's
    /// identifier for ``cancel(_:)``.
    @discardableResult
    func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> UInt64 {
        condition.withLock {
            state.nextIdentifier += 1
            let identifier = state.nextIdentifier
            let wasFirst = state.heap.first.map { deadline < $0.deadline } ?? true
            state.actions[identifier] = action
            state.push(Entry(deadline: deadline, identifier: identifier))
            if wasFirst { condition.signal() }
            return identifier
        }
    }

    /// Cancels a timer; returns false when it already fired (or was cancelled).
    @discardableResult
    func cancel(_ identifier: UInt64) -> Bool {
        condition.withLock { state.actions.removeValue(forKey: identifier) != nil }
    }

    /// Ends the thread; timers not yet due never fire.
    func shutdown() {
        condition.withLock {
            state.stopped = true
            state.actions.removeAll()
            state.heap.removeAll()
            condition.signal()
        }
    }

    private func run() {
        while true {
            var due: [@Sendable () -> Void] = []
            let stopped = condition.withLock { () -> Bool in
                while true {
                    if state.stopped { return true }
                    guard let top = state.heap.first else {
                        condition.wait(timeout: nil)
                        continue
                    }
                    if state.actions[top.identifier] == nil {
                        state.popTop()
                        continue
                    }
                    let now = ContinuousClock.now
                    if top.deadline <= now { break }
                    condition.wait(timeout: top.deadline - now)
                }
                let now = ContinuousClock.now
                while let top = state.heap.first, top.deadline <= now {
                    state.popTop()
                    if let action = state.actions.removeValue(forKey: top.identifier) { due.append(action) }
                }
                return false
            }
            if stopped { return }
            for action in due { action() }
        }
    }
}
