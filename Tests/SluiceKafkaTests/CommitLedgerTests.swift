import SluiceTesting
import Testing

@testable import SluiceKafka

@Suite("The consumer's commit ledger")
struct CommitLedgerTests {
    let start = ContinuousClock.now

    @Test("callers who ask while the callers' commit is out share the next one, which starts once that one completed")
    func callersCoalesce() {
        var ledger = CommitLedger<String>(commitInterval: .seconds(5), now: start)
        ledger.callerAsked("a")
        let first = ledger.takeWaitingCallers()
        #expect(first == ["a"])
        let one = ledger.started(.callers(first!), now: start, timeout: .seconds(30))
        for caller in ["b", "c", "d"] { ledger.callerAsked(caller) }
        #expect(ledger.takeWaitingCallers() == nil, "one callers' commit at a time")
        guard case .callers(let answered) = ledger.completed(one, failed: false, now: start) else {
            Issue.record("the callers' commit completes as one")
            return
        }
        #expect(answered == ["a"])
        #expect(ledger.takeWaitingCallers() == ["b", "c", "d"], "three callers, one commit")
        #expect(ledger.takeWaitingCallers() == nil)
    }

    @Test("a commit refused at once completes at once and frees the callers' slot")
    func refusedAtOnce() {
        var ledger = CommitLedger<Int>(commitInterval: .seconds(5), now: start)
        ledger.callerAsked(1)
        let waiting = ledger.takeWaitingCallers()!
        let identifier = ledger.started(.callers(waiting), now: start, timeout: .seconds(30))
        #expect(ledger.completed(identifier, failed: true, now: start) != nil)
        #expect(
            ledger.completed(identifier, failed: true, now: start) == nil, "a result comes once; a second is ignored")
        ledger.callerAsked(2)
        #expect(ledger.takeWaitingCallers() == [2])
    }

    @Test("a failing periodic commit is retried after 100 ms, doubling to the commit interval; a success resets it")
    func periodicBackoff() {
        var ledger = CommitLedger<Int>(commitInterval: .seconds(5), now: start)
        let early = ledger.periodicDue(now: start + .seconds(5) - .nanoseconds(1))
        #expect(!early, "not before the interval")
        var now = start + .seconds(5)
        var retries: [Duration] = []
        for _ in 0..<8 {
            let due = ledger.periodicDue(now: now)
            #expect(due)
            #expect(ledger.nextPeriodic == now + .seconds(5))
            let identifier = ledger.started(.periodic, now: now, timeout: .seconds(30))
            #expect(ledger.periodicOut)
            guard case .periodic(let retryIn?) = ledger.completed(identifier, failed: true, now: now) else {
                Issue.record("a failed periodic commit is retried")
                return
            }
            retries.append(retryIn)
            #expect(ledger.nextPeriodic == now + retryIn, "brought forward")
            now = now + retryIn
        }
        #expect(
            retries == [
                .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1_600),
                .milliseconds(3_200), .seconds(5), .seconds(5),
            ])
        #expect(ledger.periodicFailures == 8)
        let due = ledger.periodicDue(now: now)
        #expect(due)
        let identifier = ledger.started(.periodic, now: now, timeout: .seconds(30))
        guard case .periodic(nil) = ledger.completed(identifier, failed: false, now: now) else {
            Issue.record("a successful periodic commit")
            return
        }
        #expect(ledger.periodicFailures == 0)
        #expect(ledger.nextPeriodic == now + .seconds(5))
    }

    @Test(
        "deadlines: commits past theirs are listed oldest first; the next deadline counts the periodic commit only when it may start"
    )
    func deadlines() {
        var ledger = CommitLedger<Int>(commitInterval: .seconds(5), now: start)
        #expect(ledger.nextDeadline(periodicAllowed: false) == nil)
        #expect(ledger.nextDeadline(periodicAllowed: true) == start + .seconds(5))
        let revocation = ledger.started(.revocation(7), now: start, timeout: .seconds(5))
        let close = ledger.started(.close, now: start + .seconds(1), timeout: .seconds(2))
        #expect(ledger.nextDeadline(periodicAllowed: false) == start + .seconds(3))
        #expect(ledger.expired(now: start + .seconds(3) - .nanoseconds(1)) == [])
        #expect(ledger.expired(now: start + .seconds(3)) == [close])
        #expect(ledger.expired(now: start + .seconds(6)) == [revocation, close])
        guard case .revocation(7) = ledger.completed(revocation, failed: true, now: start + .seconds(6)) else {
            Issue.record("the revocation's commit")
            return
        }
        guard case .close = ledger.completed(close, failed: true, now: start + .seconds(6)) else {
            Issue.record("the close's commit")
            return
        }
        #expect(ledger.inFlight == 0)
    }

    @Test("at destroy every caller still waiting, in a commit or for one, is handed back once")
    func abandonAll() {
        var ledger = CommitLedger<Int>(commitInterval: .seconds(5), now: start)
        ledger.callerAsked(1)
        let waiting = ledger.takeWaitingCallers()!
        _ = ledger.started(.callers(waiting), now: start, timeout: .seconds(30))
        ledger.callerAsked(2)
        _ = ledger.started(.periodic, now: start, timeout: .seconds(30))
        #expect(ledger.abandonAll().sorted() == [1, 2])
        #expect(ledger.abandonAll() == [])
        #expect(ledger.inFlight == 0 && !ledger.periodicOut)
    }

    /// The loop's use in random order: callers ask, commits complete (or time out) in any order, some refused
    /// at once, and at the end the consumer is destroyed. Every caller is answered exactly once, by a commit
    /// that started after it asked, and no two callers' commits are out at once.
    @Test("random sequences: every caller answered once, by a commit that started after it asked")
    func randomSequences() {
        for seed in UInt64(0)..<1_000 {
            var random = InputMutator.Generator(state: seed)
            var ledger = CommitLedger<Int>(commitInterval: .seconds(5), now: start)
            var asked: [Int: Int] = [:]  // caller -> step it asked at
            var answered: [Int: Int] = [:]  // caller -> times answered
            var started: [UInt64: Int] = [:]  // commit -> step it started at
            var callersOut: Set<UInt64> = []
            var nextCaller = 0
            func startCallers(step: Int) {
                guard let callers = ledger.takeWaitingCallers() else { return }
                #expect(callersOut.isEmpty, "seed \(seed): one callers' commit at a time")
                let identifier = ledger.started(.callers(callers), now: start, timeout: .seconds(30))
                started[identifier] = step
                callersOut.insert(identifier)
            }
            func complete(_ identifier: UInt64, step: Int) {
                guard
                    case .callers(let callers) = ledger.completed(
                        identifier, failed: random.next() % 3 == 0, now: start)
                else { return }
                callersOut.remove(identifier)
                for caller in callers {
                    answered[caller, default: 0] += 1
                    #expect(
                        started[identifier]! >= asked[caller]!,
                        "seed \(seed): caller \(caller) answered by a commit that started before it asked")
                }
                startCallers(step: step)
            }
            for step in 0..<60 {
                switch random.next() % 4 {
                case 0, 1:
                    ledger.callerAsked(nextCaller)
                    asked[nextCaller] = step
                    nextCaller += 1
                    startCallers(step: step)
                    // Refused at once, sometimes.
                    if random.next() % 5 == 0, let refused = callersOut.first { complete(refused, step: step) }
                default:
                    if let identifier = callersOut.randomElement(using: &random) { complete(identifier, step: step) }
                }
            }
            for caller in ledger.abandonAll() { answered[caller, default: 0] += 1 }
            #expect(
                answered.count == nextCaller && answered.values.allSatisfy { $0 == 1 },
                "seed \(seed): every caller answered once")
        }
    }
}
