/// Fires actions at deadlines from a thread of its own, so Sluice's timers (the handler watchdog, batch
/// timeouts, the supervisor's breaker and stall timers) go off even when every thread of Swift's
/// cooperative pool is blocked by handler code. `Task.sleep` cannot promise that: its wake-up is queued to
/// that pool.
///
/// Actions run on the timer thread and must be short (resume a continuation, flip a flag).
final class TimerThread: Sendable {
    /// The process's timer thread, started on first use.
    static let shared = TimerThread(name: "sluice-timers")

    private struct Entry {
        let deadline: ContinuousClock.Instant
        let identifier: UInt64
    }

    private struct State {
        var nextIdentifier: UInt64 = 0
        /// A binary min-heap on deadline; cancelled entries are dropped when they reach the top.
        var heap: [Entry] = []
        var actions: [UInt64: @Sendable () -> Void] = [:]

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

    /// Suspends until `deadline`. Throws `CancellationError` when the task is cancelled first.
    func sleep(until deadline: ContinuousClock.Instant) async throws {
        let gate = SleepGate()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                gate.install(continuation)
                let identifier = schedule(at: deadline) { gate.finish(nil) }
                if gate.setTimer(identifier) == false { cancel(identifier) }
            }
        } onCancel: {
            if let identifier = gate.finish(CancellationError()) { cancel(identifier) }
        }
    }

    private func run() {
        while true {
            var due: [@Sendable () -> Void] = []
            condition.withLock {
                while true {
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
            }
            for action in due { action() }
        }
    }
}

/// The one continuation of a ``TimerThread/sleep(until:)``, resumed once by the timer or by cancellation,
/// whichever comes first (cancellation may come before the continuation exists).
private final class SleepGate: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Void, any Error>?
        var outcome: (any Error)??
        var timer: UInt64?
    }

    private let state = MonotonicCondition()
    nonisolated(unsafe) private var value = State()

    func install(_ continuation: CheckedContinuation<Void, any Error>) {
        let earlyOutcome: (any Error)?? = state.withLock {
            if let outcome = value.outcome { return .some(outcome) }
            value.continuation = continuation
            return nil
        }
        if let earlyOutcome { resume(continuation, with: earlyOutcome) }
    }

    /// Records the timer; false when the sleep already ended (the timer is to be cancelled).
    func setTimer(_ identifier: UInt64) -> Bool {
        state.withLock {
            guard value.outcome == nil else { return false }
            value.timer = identifier
            return true
        }
    }

    /// Ends the sleep with `error` (nil: the deadline came). Returns the timer to cancel, if any.
    @discardableResult
    func finish(_ error: (any Error)?) -> UInt64? {
        let (continuation, timer) = state.withLock { () -> (CheckedContinuation<Void, any Error>?, UInt64?) in
            guard value.outcome == nil else { return (nil, nil) }
            value.outcome = .some(error)
            defer { value.continuation = nil }
            return (value.continuation, value.timer)
        }
        if let continuation { resume(continuation, with: error) }
        return timer
    }

    private func resume(_ continuation: CheckedContinuation<Void, any Error>, with error: (any Error)?) {
        if let error { continuation.resume(throwing: error) } else { continuation.resume() }
    }
}
