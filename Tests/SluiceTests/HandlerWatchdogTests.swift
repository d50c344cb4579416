import PropertyBased
import Testing

@testable import Sluice

@Suite("HandlerWatchdog", .timeLimit(.minutes(1)))
struct HandlerWatchdogTests {
    let second: Int64 = 1_000_000_000
    var watchdog: HandlerWatchdog { HandlerWatchdog(timeoutNanoseconds: 30 * second) }

    @Test("a call is overdue once it ran longer than the timeout, not at it; the first overdue call is named")
    func overdue() {
        let calls = [HandlerWatchdog.Call(started: 100 * second, offset: 7), .init(started: 90 * second, offset: 3)]
        #expect(watchdog.overdue(calls, now: 120 * second) == nil, "ran 30 s: not yet")
        #expect(watchdog.overdue(calls, now: 120 * second + 1) == .init(started: 90 * second, offset: 3))
        #expect(watchdog.overdue(calls, now: 131 * second)?.offset == 7, "both overdue: the first one")
        #expect(watchdog.overdue([], now: 1_000 * second) == nil)
    }

    @Test("it looks again when the longest-running call reaches the timeout, within 10 ms and 60 s")
    func recheck() {
        let calls = [HandlerWatchdog.Call(started: 100 * second, offset: 7), .init(started: 90 * second, offset: 3)]
        #expect(watchdog.recheckAfter(calls, now: 100 * second) == 20 * second)
        #expect(watchdog.recheckAfter([], now: 100 * second) == 30 * second, "no call: a whole timeout")
        #expect(watchdog.recheckAfter(calls, now: 500 * second) == HandlerWatchdog.minimumRecheck, "overdue: soon")
        let long = HandlerWatchdog(timeoutNanoseconds: 3_600 * second)
        #expect(long.recheckAfter([], now: 0) == HandlerWatchdog.maximumRecheck, "at most a minute")
    }

    @Test("random calls: a call is overdue exactly when it ran past the timeout, and the wait never passes that moment")
    func randomCalls() async {
        await propertyCheck(input: Gen.int(in: 0...120).array(of: 0...8), Gen.int(in: 0...200)) { starts, nowSeconds in
            let now = Int64(nowSeconds) * second
            let calls = starts.enumerated().map { HandlerWatchdog.Call(started: Int64($1) * second, offset: Int64($0)) }
            let found = watchdog.overdue(calls, now: now)
            #expect((found != nil) == calls.contains { now - $0.started > 30 * second })
            let wait = watchdog.recheckAfter(calls, now: now)
            #expect(wait >= HandlerWatchdog.minimumRecheck && wait <= HandlerWatchdog.maximumRecheck)
            for call in calls where !watchdog.isOverdue(call, now: now) {
                #expect(now + wait - call.started <= 30 * second + HandlerWatchdog.minimumRecheck, "not later than due")
            }
        }
    }
}
