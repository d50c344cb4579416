/// The handler watchdog's arithmetic, pure on nanoseconds (``MonotonicNanoseconds``): which running call is past
/// `handlerTimeout`, and how long to wait before looking again. The pipeline reads its lanes' calls and acts.
struct HandlerWatchdog: Sendable, Equatable {
    /// A handler call running now: when it started, and its first offset.
    struct Call: Sendable, Equatable {
        var started: Int64
        var offset: Int64
    }

    let timeoutNanoseconds: Int64
    /// The shortest and longest wait between looks.
    static let minimumRecheck: Int64 = 10_000_000
    static let maximumRecheck: Int64 = 60_000_000_000

    /// Whether `call` has run longer than the timeout at `now`.
    func isOverdue(_ call: Call, now: Int64) -> Bool { now - call.started > timeoutNanoseconds }

    /// The first of `calls` that has run longer than the timeout at `now`.
    func overdue(_ calls: some Sequence<Call>, now: Int64) -> Call? {
        calls.first { isOverdue($0, now: now) }
    }

    /// How long to wait before looking again: until the longest-running call reaches the timeout (with no call
    /// running, a whole timeout), at least 10 ms and at most 60 s.
    func recheckAfter(_ calls: some Sequence<Call>, now: Int64) -> Int64 {
        let longest = calls.map { now - $0.started }.max() ?? 0
        return min(max(timeoutNanoseconds - longest, Self.minimumRecheck), Self.maximumRecheck)
    }
}
