import PropertyBased
import Testing

@testable import Sluice

@Suite("OffsetTracker", .timeLimit(.minutes(2)))
struct OffsetTrackerTests {
    @Test("the watermark is the lowest offset not done, whatever the completion order")
    func contiguousWatermark() {
        var tracker = OffsetTracker()
        #expect(tracker.watermark == nil)
        for offset in Int64(10)...14 { _ = tracker.begin(offset) }
        #expect(tracker.watermark == 10)
        #expect(tracker.complete(12) == nil)
        #expect(tracker.complete(11) == nil)
        #expect(tracker.watermark == 10)
        #expect(tracker.complete(10) == 13)
        #expect(tracker.inFlight == 2)
        #expect(tracker.complete(14) == nil)
        #expect(tracker.complete(13) == 15)
        #expect(tracker.inFlight == 0)
    }

    @Test("gaps in offsets (compaction, transaction markers) do not hold the watermark back")
    func gaps() {
        var tracker = OffsetTracker()
        let began3 = tracker.begin(3)
        #expect(began3)
        let began7 = tracker.begin(7)
        #expect(began7)
        let began20 = tracker.begin(20)
        #expect(began20)
        tracker.complete(7)
        #expect(tracker.watermark == 3)
        tracker.complete(3)
        #expect(tracker.watermark == 20)
        tracker.complete(20)
        #expect(tracker.watermark == 21)
        let began30 = tracker.begin(30)
        #expect(began30)
        #expect(tracker.watermark == 30)
    }

    @Test("an offset at or below one already begun is refused, not a crash")
    func rewind() {
        var tracker = OffsetTracker()
        let began5 = tracker.begin(5)
        #expect(began5)
        let began6 = tracker.begin(6)
        #expect(began6)
        let again6 = tracker.begin(6)
        #expect(!again6)
        let again2 = tracker.begin(2)
        #expect(!again2)
        tracker.complete(5)
        tracker.complete(6)
        #expect(tracker.watermark == 7)
        #expect(tracker.inFlight == 0)
    }

    @Test(
        "random begins (with gaps and rewinds) and completions in any order, repeats included, agree with a plain model"
    )
    func agreesWithModel() async {
        // An operation: begin the next offset after a gap (0-3), begin one already begun (a rewind), or
        // complete the in-flight offset at some position (repeating a completion now and then).
        let operation = Gen.int(in: 0...99)
        await propertyCheck(count: 300, input: operation.array(of: 1...200), Gen.int(in: 0...1_000).array(of: 200)) {
            operations, picks in
            var tracker = OffsetTracker()
            var begun: [Int64] = []
            var done: Set<Int64> = []
            var next: Int64 = 100
            for (index, roll) in operations.enumerated() {
                let pick = picks[index]
                switch roll {
                case 0..<45:
                    next += Int64(pick % 4)
                    let began = tracker.begin(next, timestamp: next * 10)
                    #expect(began)
                    begun.append(next)
                    next += 1
                case 45..<50:
                    if let last = begun.last {
                        let began = tracker.begin(last - Int64(pick % 3))
                        #expect(!began, "a rewound offset is refused")
                    }
                default:
                    guard !begun.isEmpty else { continue }
                    let offset = begun[pick % begun.count]
                    let watermarkBefore = tracker.watermark
                    let moved = tracker.complete(offset)
                    let wasDone = done.contains(offset)
                    done.insert(offset)
                    let expected = begun.first { !done.contains($0) } ?? (begun.last! + 1)
                    #expect(tracker.watermark == expected, "after \(operations.prefix(index + 1).count) operations")
                    if wasDone || expected == watermarkBefore {
                        #expect(
                            moved == nil || moved == watermarkBefore,
                            "a completion that does not move the watermark reports no new one")
                    }
                }
                let inFlight = begun.filter { !done.contains($0) }
                let watermark = tracker.watermark
                #expect(tracker.inFlight == inFlight.count)
                #expect(
                    tracker.completedAboveWatermark
                        == Set(begun.filter { done.contains($0) && $0 > (watermark ?? .min) }))
                #expect(tracker.oldestPendingTimestamp == inFlight.first.map { $0 * 10 })
            }
        }
    }
}
