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
}
