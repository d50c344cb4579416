import DequeModule

/// The contiguous watermark of a shard: the lowest offset not yet done.
///
/// Offsets are begun in increasing order (with gaps: compaction and transaction markers leave them) and
/// completed in any order. ``watermark`` is the offset to commit: everything before it is done.
struct OffsetTracker: Sendable {
    /// Offsets begun and not yet below the watermark, in increasing order.
    private var pending: Deque<Int64> = []
    /// The timestamps (ms since the epoch, -1 unknown) of `pending`, in the same order.
    private var pendingTimestamps: Deque<Int64> = []
    /// Whether each of `pending` is done (finished out of order, waiting for an earlier one), in the same
    /// order: a completion finds its place by binary search instead of hashing into a set.
    private var done: Deque<Bool> = []
    /// How many of `done` are true.
    private var doneCount = 0
    /// The next offset to commit, or nil before anything was begun.
    private(set) var watermark: Int64?

    /// Messages begun and not completed.
    var inFlight: Int { pending.count - doneCount }

    /// Offsets done above the watermark (finished out of order, waiting for an earlier one).
    var completedAboveWatermark: Set<Int64> {
        guard doneCount > 0 else { return [] }
        return Set(zip(pending, done).lazy.filter(\.1).map(\.0))
    }

    /// The timestamp of the oldest message begun and not done (the one at the watermark), if it had one.
    var oldestPendingTimestamp: Int64? {
        guard let first = pendingTimestamps.first, first >= 0 else { return nil }
        return first
    }

    /// Records that `offset` (produced at `timestamp`, ms since the epoch) entered the pipeline. Returns false,
    /// recording nothing, for an offset at or below one already begun: the partition was rewound under the
    /// pipeline and that message was taken.
    mutating func begin(_ offset: Int64, timestamp: Int64? = nil) -> Bool {
        if let highest, offset <= highest { return false }
        if pending.isEmpty { watermark = offset }
        pending.append(offset)
        pendingTimestamps.append(timestamp ?? -1)
        done.append(false)
        highest = offset
        return true
    }

    /// The highest offset begun so far.
    private(set) var highest: Int64?

    /// Records that `offset` is done. Returns the new watermark if it advanced. An offset that is not in
    /// flight (never begun, or already done) changes nothing.
    @discardableResult
    mutating func complete(_ offset: Int64) -> Int64? {
        guard let first = pending.first, offset >= first else { return nil }
        if offset != first {
            guard let index = index(of: offset), !done[index] else { return nil }
            done[index] = true
            doneCount += 1
            return nil
        }
        removeFirst()
        var next = offset + 1
        while let head = pending.first, done[0] {
            removeFirst()
            doneCount -= 1
            next = head + 1
        }
        watermark = pending.first ?? next
        return watermark
    }

    private mutating func removeFirst() {
        pending.removeFirst()
        pendingTimestamps.removeFirst()
        done.removeFirst()
    }

    /// The position of `offset` in `pending` (increasing, at most one apart where no offset is missing), if
    /// it is there: its distance from the first when nothing between is missing, else a binary search below that.
    private func index(of offset: Int64) -> Int? {
        guard let first = pending.first, offset >= first else { return nil }
        let distance = offset - first
        if distance < pending.count, pending[Int(distance)] == offset { return Int(distance) }
        var low = 0
        var high = Int(min(distance, Int64(pending.count)))
        while low < high {
            let middle = (low + high) / 2
            if pending[middle] < offset { low = middle + 1 } else { high = middle }
        }
        return low < pending.count && pending[low] == offset ? low : nil
    }
}
