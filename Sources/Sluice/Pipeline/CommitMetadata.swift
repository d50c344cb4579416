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

    /// Kafka's default `offset.metadata.max.bytes`: longer metadata is no one's.
    static let maximumAccepted = 4_096

    /// The metadata for `done` offsets above `committed` (others are ignored); nil when there are none.
    static func encode(done: Set<Int64>, above committed: Int64) -> String? {
        let distances = done.lazy.filter { $0 > committed }.map { $0 - committed }.sorted()
        guard !distances.isEmpty else { return nil }
        var text = prefix
        var index = 0
        while index < distances.count {
            var end = index
            while end + 1 < distances.count, distances[end + 1] == distances[end] + 1 { end += 1 }
            let run =
                distances[index] == distances[end] ? "\(distances[index])" : "\(distances[index])-\(distances[end])"
            let piece = (text == prefix ? "" : ",") + run
            if text.utf8.count + piece.utf8.count > maximumLength { break }
            text += piece
            index = end + 1
        }
        return text == prefix ? nil : text
    }

    /// What a commit's metadata says is done: the offsets, and how many it named at or past the high watermark
    /// (no message is there yet, so none is done; they are left out).
    struct Decoded: Equatable {
        var done: Set<Int64>
        var pastHighWatermark: Int64 = 0
    }

    /// The done offsets `metadata` names above `committed`, bounded by what a host can have done: commit
    /// metadata comes from outside the process (anyone who may commit for the group can write it). Metadata that
    /// is not Sluice's is no offsets. Refused, naming what is wrong: longer than Kafka keeps (which also bounds
    /// the runs, fewer than 1,000), a run at or below the commit, runs out of order or overlapping, or more than
    /// `maximumDone` offsets in all. Offsets at or past `highWatermark` (when known) are left out.
    static func decode(
        _ metadata: String?, committed: Int64, highWatermark: Int64? = nil, maximumDone: Int64 = 1_000_000
    ) throws(SluiceError) -> Decoded {
        guard let metadata, metadata.hasPrefix(prefix) else { return Decoded(done: []) }
        func bad(_ what: String) -> SluiceError {
            SluiceError(code: .invalidInput, message: "commit metadata '\(metadata.prefix(80))': \(what)")
        }
        guard metadata.utf8.count <= maximumAccepted else { throw bad("longer than \(maximumAccepted) bytes") }
        guard InputLimits.offsets.contains(committed) else {
            throw bad("committed offset \(committed) is out of range")
        }
        let runs = metadata.dropFirst(prefix.count).split(separator: ",", omittingEmptySubsequences: false)
        // Distances are bounded so that committed + distance stays within the offsets' range.
        let farthest = InputLimits.offsets.upperBound - committed
        var parsed: [ClosedRange<Int64>] = []
        var total: Int64 = 0
        for run in runs {
            let bounds = run.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let first = Int64(bounds[0]),
                let last = Int64(bounds[bounds.count - 1]),
                first >= 1, first <= last, last <= farthest
            else { throw bad("bad run '\(run.prefix(40))'") }
            guard parsed.last.map({ $0.upperBound < first }) ?? true else {
                throw bad("runs out of order or overlapping at '\(run.prefix(40))'")
            }
            total += last - first + 1
            guard total <= maximumDone else { throw bad("names more than \(maximumDone) done offsets") }
            parsed.append(first...last)
        }
        var decoded = Decoded(done: [])
        let end = highWatermark.map { $0.subtracting(saturating: committed) } ?? farthest + 1
        for run in parsed {
            let kept = run.lowerBound..<min(run.upperBound + 1, max(run.lowerBound, end))
            decoded.pastHighWatermark += Int64(run.count) - Int64(kept.count)
            for distance in kept { decoded.done.insert(committed + distance) }
        }
        return decoded
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

    /// Waits until read or `deadline` on `clock`; nil when not read by then (the messages are handled at least once).
    func wait(until deadline: ContinuousClock.Instant, on clock: any HostClock) async -> Set<Int64>? {
        _ = await beacon.waitUntil(deadline: deadline, on: clock) { self.done != nil }
        return done
    }
}
