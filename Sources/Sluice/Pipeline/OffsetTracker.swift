import DequeModule

/// The contiguous watermark of a shard: the lowest offset not yet done.
///
/// Offsets are begun in increasing order (with gaps: compaction and transaction markers leave them) and
/// completed in any order. ``watermark`` is the offset to commit: everything before it is done.
struct OffsetTracker: Sendable {
    private var pending: Deque<Int64> = []
    /// The timestamps (ms since the epoch, -1 unknown) of `pending`, in the same order.
    private var pendingTimestamps: Deque<Int64> = []
    private var completedOutOfOrder: Set<Int64> = []
    /// The next offset to commit, or nil before anything was begun.
    private(set) var watermark: Int64?

    /// Messages begun and not completed.
    var inFlight: Int { pending.count - completedOutOfOrder.count }

    /// Offsets done above the watermark (finished out of order, waiting for an earlier one).
    var completedAboveWatermark: Set<Int64> { completedOutOfOrder }

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
        highest = offset
        return true
    }

    /// The highest offset begun so far.
    private(set) var highest: Int64?

    /// Records that `offset` is done. Returns the new watermark if it advanced.
    @discardableResult
    mutating func complete(_ offset: Int64) -> Int64? {
        guard let first = pending.first else { return nil }
        if offset != first {
            completedOutOfOrder.insert(offset)
            return nil
        }
        pending.removeFirst()
        pendingTimestamps.removeFirst()
        var next = offset + 1
        while let head = pending.first, completedOutOfOrder.remove(head) != nil {
            pending.removeFirst()
            pendingTimestamps.removeFirst()
            next = head + 1
        }
        watermark = pending.first ?? next
        return watermark
    }
}
