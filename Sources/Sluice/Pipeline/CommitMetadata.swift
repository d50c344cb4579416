import Synchronization

/// The commit metadata Sluice stores beside a committed offset: the offsets above it that are already done
/// (with `ordering: key` or `none`, other keys run ahead of a slow or failing one). Whoever owns the partition
/// next, this host after a restart or another after a rebalance, completes those without calling the handler
/// again.
///
/// Format: `sluice/1 ` followed by comma-separated runs of distances from the committed offset, `a` or
/// `a-b` (inclusive), e.g. `sluice/1 1-3,7`. Kafka keeps up to `offset.metadata.max.bytes` (4096 by default);
/// past ``maximumLength`` the highest runs are left out, and those messages are handled again (at least once).
enum CommitMetadata {
    static let prefix = "sluice/1 "
    /// Stays under Kafka's default limit with room to spare.
    static let maximumLength = 3_000

    /// The metadata for `done` offsets above `committed` (others are ignored); nil when there are none.
    static func encode(done: Set<Int64>, above committed: Int64) -> String? {
        let distances = done.lazy.filter { $0 >= committed }.map { $0 - committed }.sorted()
        guard !distances.isEmpty else { return nil }
        var text = prefix
        var index = 0
        while index < distances.count {
            var end = index
            while end + 1 < distances.count, distances[end + 1] == distances[end] + 1 { end += 1 }
            let run = distances[index] == distances[end] ? "\(distances[index])" : "\(distances[index])-\(distances[end])"
            let piece = (text == prefix ? "" : ",") + run
            if text.utf8.count + piece.utf8.count > maximumLength { break }
            text += piece
            index = end + 1
        }
        return text == prefix ? nil : text
    }

    /// The done offsets `metadata` names above `committed`. Metadata that is not Sluice's is no offsets; a
    /// malformed one throws, naming what is wrong.
    static func decode(_ metadata: String?, committed: Int64) throws(SluiceError) -> Set<Int64> {
        guard let metadata, metadata.hasPrefix(prefix) else { return [] }
        var done: Set<Int64> = []
        for run in metadata.dropFirst(prefix.count).split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = run.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let first = Int64(bounds[0]), let last = Int64(bounds[bounds.count - 1]),
                first >= 0, first <= last, last - first < 1_000_000, committed <= Int64.max - last
            else {
                throw SluiceError(code: .invalidInput, message: "commit metadata '\(metadata.prefix(80))': bad run '\(run.prefix(40))'")
            }
            for distance in first...last { done.insert(committed + distance) }
        }
        return done
    }
}

/// The offsets the group's last commit of a partition says are done above it, read once per assignment in
/// the background (a round trip to the coordinator the supervisor loop does not wait for). The shard's
/// first pipeline waits for it, briefly, before it hands out messages.
final class GroupProgress: Sendable {
    private let state = Mutex<Set<Int64>?>(nil)
    private let beacon = Beacon()

    /// Sets the done offsets once; later calls change nothing.
    func resolve(_ done: Set<Int64>) {
        state.withLock { if $0 == nil { $0 = done } }
        beacon.notify()
    }

    /// The done offsets, once read.
    var done: Set<Int64>? { state.withLock { $0 } }

    /// Waits until read or `deadline`; nil when not read by then (the messages are handled at least once).
    func wait(until deadline: ContinuousClock.Instant) async -> Set<Int64>? {
        _ = await beacon.waitUntil(deadline: deadline) { self.done != nil }
        return done
    }
}
