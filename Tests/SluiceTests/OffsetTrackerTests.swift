import Testing

@testable import Sluice

@Suite("OffsetTracker")
struct OffsetTrackerTests {
    @Test("the watermark is the lowest offset not done, whatever the completion order")
    func contiguousWatermark() {
        var tracker = OffsetTracker()
        #expect(tracker.watermark == nil)
        for offset in Int64(10)...14 { tracker.begin(offset) }
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
        tracker.begin(3)
        tracker.begin(7)
        tracker.begin(20)
        tracker.complete(7)
        #expect(tracker.watermark == 3)
        tracker.complete(3)
        #expect(tracker.watermark == 20)
        tracker.complete(20)
        #expect(tracker.watermark == 21)
        tracker.begin(30)
        #expect(tracker.watermark == 30)
    }
}
