import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

@Suite("Which lane each message goes to")
struct LaneRouterTests {
    static func batch(keys: [String?], from first: Int64 = 100) -> [Message] {
        keys.enumerated().map { index, key in
            Message(
                topic: "orders", partition: 0, offset: first + Int64(index),
                key: key.map { KafkaBytes(Array($0.utf8)) },
                value: KafkaBytes([1]))
        }
    }

    static func offsets(_ run: LaneRun) -> [Int64] { run.map(\.offset) }

    @Test("partition ordering: the whole run to the one lane, as it came")
    func partition() {
        let batch = Self.batch(keys: ["a", "b", nil, "a"])
        let routed = LaneRouter(ordering: .partition, lanes: 1).route(batch, 1..<4)
        #expect(routed.count == 1 && routed[0].queue == 0 && Self.offsets(routed[0].run) == [101, 102, 103])
        #expect(LaneRouter(ordering: .partition, lanes: 1).route(batch, 2..<2).isEmpty)
    }

    @Test("key ordering: one key always to the same lane, in offset order; the hash is FNV-1a, stable across releases")
    func key() {
        let router = LaneRouter(ordering: .key, lanes: 8)
        let keys = (0..<200).map { index -> String? in index % 17 == 0 ? nil : "customer-\(index % 23)" }
        let batch = Self.batch(keys: keys)
        let routed = router.route(batch, batch.indices)
        #expect(Set(routed.map(\.queue)).count == routed.count, "one run per lane")
        var laneOfKey: [String: Int] = [:]
        var seen: [Int64] = []
        for (queue, run) in routed {
            let offsets = Self.offsets(run)
            #expect(offsets == offsets.sorted(), "lane \(queue) in offset order")
            seen += offsets
            for message in run {
                let key = message.key.map { String(decoding: $0.withUnsafeBytes { Array($0) }, as: UTF8.self) } ?? ""
                #expect(laneOfKey[key, default: queue] == queue, "key '\(key)' in one lane")
                laneOfKey[key] = queue
            }
        }
        #expect(seen.sorted() == batch.map(\.offset), "every message once")
        #expect(laneOfKey[""] == 0, "messages without a key go to lane 0")
        // Pinned (FNV-1a computed independently): a key's lane must not change between releases.
        #expect(router.lane(for: Self.batch(keys: ["customer-1"])[0]) == 7)
        #expect(router.lane(for: Self.batch(keys: ["order-42"])[0]) == 4)
        #expect(LaneRouter(ordering: .key, lanes: 1).route(batch, 0..<5).map(\.queue) == [0])
    }

    @Test("no ordering: the run split evenly into the one shared queue, in order")
    func none() {
        let batch = Self.batch(keys: Array(repeating: nil, count: 10))
        let routed = LaneRouter(ordering: .none, lanes: 4).route(batch, 0..<10)
        #expect(routed.map(\.queue) == [0, 0, 0, 0])
        #expect(routed.map { Self.offsets($0.run) } == [[100, 101, 102], [103, 104, 105], [106, 107, 108], [109]])
        #expect(LaneRouter(ordering: .none, lanes: 4).queueCount == 1)
        #expect(LaneRouter(ordering: .key, lanes: 4).queueCount == 4)
    }
}
