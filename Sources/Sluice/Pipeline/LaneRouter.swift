import SluiceKafka

/// Which lane's queue each message of a batch goes to, by the topic's ordering: all to the one lane
/// (`partition`), per key hash (`key`: one key always to the same lane, in offset order), or split evenly over
/// the one shared queue that every lane takes from (`none`). Pure: it says where runs go; the pipeline pushes
/// them.
struct LaneRouter: Sendable {
    let ordering: TopicConfiguration.Ordering
    /// The lanes (handler calls at once).
    let lanes: Int

    /// How many queues there are: one shared by every lane for `none`, one per lane otherwise.
    var queueCount: Int { ordering == .none ? 1 : lanes }

    /// The runs of `batch[range]` and the queue each goes to, each run in offset order. The runs share `batch`.
    func route(_ batch: [Message], _ range: Range<Int>) -> [(queue: Int, run: LaneRun)] {
        guard !range.isEmpty else { return [] }
        switch ordering {
        case .partition:
            return [(0, LaneRun(batch, range: range))]
        case .key:
            guard lanes > 1 else { return [(0, LaneRun(batch, range: range))] }
            // Each lane's positions sized once: appending to empty arrays reallocated each about log2(n / lanes) times.
            var assigned = [Int32](repeating: 0, count: range.count)
            var counts = [Int](repeating: 0, count: lanes)
            for position in range {
                let lane = lane(for: batch[position])
                assigned[position - range.lowerBound] = Int32(lane)
                counts[lane] += 1
            }
            var perLane = counts.map { count -> [Int32] in
                var positions: [Int32] = []
                positions.reserveCapacity(count)
                return positions
            }
            for position in range { perLane[Int(assigned[position - range.lowerBound])].append(Int32(position)) }
            return perLane.enumerated().compactMap { index, positions in
                positions.isEmpty ? nil : (index, LaneRun(batch, positions: positions))
            }
        case .none:
            let size = max(1, (range.count + lanes - 1) / lanes)
            return stride(from: range.lowerBound, to: range.upperBound, by: size).map { start in
                (0, LaneRun(batch, range: start..<min(start + size, range.upperBound)))
            }
        }
    }

    /// The lane of `message`: by its key's FNV-1a hash (stable across processes and releases, unlike `Hasher`)
    /// for `key` ordering; lane 0 otherwise, and for a message without a key.
    func lane(for message: Message) -> Int {
        guard ordering == .key, lanes > 1, let key = message.key else { return 0 }
        let hash = key.withUnsafeBytes { bytes in
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in bytes {
                hash ^= UInt64(byte)
                hash &*= 0x0000_0100_0000_01B3
            }
            return hash
        }
        return Int(hash % UInt64(lanes))
    }
}
