import SluiceKafka
import Testing

@testable import Sluice

@Suite("LaneRun: a lane's share of a fetched batch")
struct LaneRunTests {
    private static let batch = (0..<10).map { offset in
        Message(topic: "orders", partition: 0, offset: Int64(offset), value: KafkaBytes(Array("v\(offset)".utf8)))
    }

    @Test("a range of the batch: its messages in order; slices and drops keep to the range")
    func range() {
        let run = LaneRun(Self.batch, range: 3..<8)
        #expect(run.map(\.offset) == [3, 4, 5, 6, 7])
        #expect(run.first?.offset == 3)
        #expect(run.dropFirst(2).map(\.offset) == [5, 6, 7])
        #expect(run.dropFirst(2).prefix(1).slice.map(\.offset) == [5])
        #expect(run.slice.map(\.offset) == [3, 4, 5, 6, 7])
        #expect(run.dropFirst(5).isEmpty)
    }

    @Test("positions in the batch: those messages in the given order; slicing keeps to them")
    func positions() {
        let run = LaneRun(Self.batch, positions: [1, 4, 9])
        #expect(run.map(\.offset) == [1, 4, 9])
        #expect(run.count == 3)
        #expect(run.dropFirst().map(\.offset) == [4, 9])
        #expect(run.dropFirst().prefix(1).slice.map(\.offset) == [4])
        #expect(run.slice.map { String(decoding: $0.value, as: UTF8.self) } == ["v1", "v4", "v9"])
        #expect(LaneRun([]).isEmpty)
    }
}

@Suite("MonotonicNanoseconds")
struct MonotonicNanosecondsTests {
    @Test("durations convert to whole nanoseconds and milliseconds, saturating instead of trapping")
    func conversion() {
        #expect(Duration.seconds(30).nanoseconds == 30_000_000_000)
        #expect(Duration.milliseconds(1_500).nanoseconds == 1_500_000_000)
        #expect(Duration.nanoseconds(7).nanoseconds == 7)
        #expect(Duration.milliseconds(1_500).milliseconds == 1_500)
        #expect(Duration.microseconds(2_999).milliseconds == 2)
        #expect(Duration.seconds(Int64.max).nanoseconds == .max)
        #expect(Duration.seconds(Int64.min).nanoseconds == .min)
        #expect(Duration.seconds(Int64.max / 10).milliseconds == .max)
    }

    @Test("the clock does not go back")
    func monotonic() {
        var last = MonotonicNanoseconds.now()
        for _ in 0..<10_000 {
            let now = MonotonicNanoseconds.now()
            #expect(now >= last)
            last = now
        }
    }
}
