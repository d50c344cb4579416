import PropertyBased
import Testing

@testable import Sluice

@Suite("StallDetector", .timeLimit(.minutes(1)))
struct StallDetectorTests {
    typealias Detector = StallDetector<ContinuousClock.Instant>
    let start = ContinuousClock.now

    func detector() -> Detector { Detector(stallAfter: .seconds(30), unstartedAfter: .seconds(10), now: start) }

    func seen(_ done: Int?, expected: Bool = true, fetched: Bool = true, pipeline: UInt64 = 1) -> Detector.Observation {
        .init(
            progress: done.map { .init(pipeline: pipeline, done: $0) }, expectedToProgress: expected, fetched: fetched)
    }

    @Test("a shard without lag, or paused, is never stalled however long nothing happens")
    func idleIsNotStalled() {
        var detector = detector()
        for second in stride(from: 0, through: 600, by: 5) {
            #expect(detector.observe(seen(7, expected: false), now: start + .seconds(second)) == .none)
        }
        #expect(detector.stalledSince == nil)
    }

    @Test("no progress for stallAfter: reported once, since the last progress; progress clears it once")
    func stalledOnceThenCleared() {
        var detector = detector()
        #expect(detector.observe(seen(5), now: start + .seconds(1)) == .none, "first sight is progress")
        #expect(detector.observe(seen(5), now: start + .seconds(30)) == .none, "29 s without progress")
        #expect(detector.observe(seen(5), now: start + .seconds(31)) == .stalled(since: start + .seconds(1)))
        #expect(detector.stalledSince == start + .seconds(1))
        #expect(detector.observe(seen(5), now: start + .seconds(90)) == .none, "reported once")
        #expect(detector.observe(seen(6), now: start + .seconds(91)) == .cleared)
        #expect(detector.stalledSince == nil)
        #expect(detector.observe(seen(7), now: start + .seconds(92)) == .none, "cleared once")
    }

    @Test("a new pipeline is progress, even with the same count")
    func newPipelineIsProgress() {
        var detector = detector()
        _ = detector.observe(seen(5, pipeline: 1), now: start)
        #expect(detector.observe(seen(5, pipeline: 2), now: start + .seconds(40)) == .none)
        #expect(
            detector.observe(seen(5, pipeline: 2), now: start + .seconds(70)) == .stalled(since: start + .seconds(40)))
    }

    @Test("nothing fetched since the assignment: the fetcher is restarted once per stall, before the stall is reported")
    func unfetchedRestartsTheFetcherOnce() {
        var detector = detector()
        _ = detector.observe(seen(nil, fetched: false), now: start)
        #expect(detector.observe(seen(nil, fetched: false), now: start + .seconds(9)) == .none)
        #expect(detector.observe(seen(nil, fetched: false), now: start + .seconds(10)) == .restartFetcher)
        #expect(detector.observe(seen(nil, fetched: false), now: start + .seconds(20)) == .none, "once")
        #expect(detector.observe(seen(nil, fetched: false), now: start + .seconds(30)) == .stalled(since: start))
        #expect(detector.observe(seen(1), now: start + .seconds(31)) == .cleared)
        _ = detector.observe(seen(nil, fetched: false), now: start + .seconds(32))
        #expect(
            detector.observe(seen(nil, fetched: false), now: start + .seconds(42)) == .restartFetcher,
            "again in the next stall")
    }

    @Test(
        "random observations: stalled only after stallAfter without progress while expected, once until cleared; cleared only after stalled"
    )
    func randomSequences() async {
        let step = Gen.int(in: 0...99)
        await propertyCheck(count: 500, input: step.array(of: 1...120)) { steps in
            var detector = detector()
            var now = start
            var done = 0
            var stalled = false
            var sinceProgress = start
            for roll in steps {
                now += .seconds(roll % 13)
                let expected = roll % 7 != 0
                if roll % 5 == 0 { done += 1 }
                let previous = detector.lastProgress
                let observation = seen(done, expected: expected, fetched: roll % 11 != 0)
                let action = detector.observe(observation, now: now)
                if !expected || observation.progress != previous { sinceProgress = now }
                switch action {
                case .stalled(let since):
                    #expect(!stalled, "reported once")
                    #expect(expected && since == sinceProgress && since.duration(to: now) >= .seconds(30))
                    stalled = true
                case .cleared:
                    #expect(stalled, "cleared only after stalled")
                    stalled = false
                case .restartFetcher:
                    #expect(!observation.fetched && sinceProgress.duration(to: now) >= .seconds(10))
                case .none:
                    if stalled || !expected { break }
                    #expect(
                        sinceProgress.duration(to: now) < .seconds(30), "not stalled although nothing moved for 30 s")
                }
                #expect((detector.stalledSince != nil) == stalled)
            }
        }
    }
}
