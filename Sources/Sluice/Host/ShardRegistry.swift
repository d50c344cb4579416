import Logging
import SluiceKafka
import Synchronization

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// What a host knows of its shards outside the supervisor loop: each shard's view (its status, the counters of
/// its pipelines folded once), the pipelines running now, the offsets stored for them, and the fence that lets
/// only a shard's current pipeline store its watermark. The supervisor loop writes it; the admin API, the
/// status publisher and the watermark storer read it. One per host: nothing in it is shared between hosts.
final class ShardRegistry: Sendable {
    /// What the outside may read about a shard; written by the supervisor loop.
    struct ShardView {
        var status: ShardStatus
        /// The shard's current pipeline, once its start is shown (its pause set applied).
        var pipeline: ShardPipeline?
        /// The high watermark the lag refresher last queried (fresh for paused partitions too).
        var queriedHighWatermark: Int64?
        /// The oldest message a finished pipeline took and did not finish, if any (it is read again next).
        var leftoverOldestPending: Int64?
    }

    private struct State {
        var views: [TopicPartition: ShardView] = [:]
        /// Pipelines running now, by generation.
        var running: [UInt64: ShardPipeline] = [:]
        /// Running pipelines whose watermark may have moved since it was last stored.
        var due: Set<UInt64> = []
        /// The fence: each shard's latest pipeline, the only one whose watermark is stored (set when it starts,
        /// before it takes a message; gone when the partition is released or lost).
        var current: [TopicPartition: UInt64] = [:]
        /// What was stored for each shard of the assignment: the offset and its commit metadata.
        var stored: [TopicPartition: (offset: Int64, metadata: String?)] = [:]
        /// Where the pipelines keep their progress for a successor, should this process die (the crash journal's
        /// progress file), while the host runs with one: a released partition is forgotten there.
        var progressJournal: ProgressJournal?
        /// Shard crashes and restarts since the host started, all shards together.
        var crashes = 0
        var restarts = 0
    }

    private let state = Mutex(State())
    private let pipelineIDs = Atomic<UInt64>(0)
    private let logger: Logger
    /// Wakes the watermark storer when the first pipeline became due.
    /// Says that some pipeline progressed since the last ``storeDue(consumer:)`` (the ``WatermarkStorer`` waits on it).
    let progress: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation

    init(logger: Logger) {
        self.logger = logger
        (progress, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    // MARK: Views

    /// A new pipeline identity (``ShardContext/generation``): it increases with every pipeline start.
    func nextPipelineID() -> UInt64 { pipelineIDs.add(1, ordering: .relaxed).newValue }

    /// Shows the supervisor's state of a shard. A pipeline that is replaced has its counters folded into the
    /// shard's totals, once.
    func update(_ supervisor: ShardSupervisor) {
        state.withLock { state in
            var view =
                state.views[supervisor.topicPartition]
                ?? ShardView(
                    status: ShardStatus(
                        topicPartition: supervisor.topicPartition, generation: 0, state: supervisor.state, attempt: 0,
                        lastError: nil, pauseReasons: [], flag: supervisor.flag, inFlight: 0, processed: 0, failed: 0,
                        skipped: 0, deadLettered: 0, storedOffset: nil, highWatermark: nil, position: nil),
                    pipeline: nil)
            if let old = view.pipeline, old !== supervisor.pipeline {
                view.leftoverOldestPending = old.oldestPendingTimestamp
                view.status.add(old.counters)
                view.status.inFlight = 0
            }
            view.pipeline = supervisor.pipeline
            view.status.generation = supervisor.pipeline?.generation ?? view.status.generation
            view.status.state = supervisor.state
            view.status.attempt = supervisor.machine.attempt
            view.status.lastError = supervisor.lastError
            view.status.flag = supervisor.flag
            view.status.stalledSince = supervisor.stalledSince
            view.status.abandonedCalls = supervisor.abandonedCalls
            state.views[supervisor.topicPartition] = view
        }
    }

    /// The partition was released or lost: its view goes, and its pipelines store nothing more.
    func remove(_ topicPartition: TopicPartition) {
        let journal = state.withLock { state in
            state.views.removeValue(forKey: topicPartition)
            state.current.removeValue(forKey: topicPartition)
            state.stored.removeValue(forKey: topicPartition)
            return state.progressJournal
        }
        journal?.forget(topicPartition)
    }

    /// From now on a released or lost partition is forgotten in `journal` (nil: no more).
    func keepProgress(in journal: ProgressJournal?) {
        state.withLock { $0.progressJournal = journal }
    }

    /// Every shard's status now: its view with its current pipeline's counters, and what `consumer` says of its
    /// partition (positions, pauses, watermarks), at `nowMilliseconds` (for lag in seconds).
    func snapshot(consumer: (any ShardConsumer)?, quarantines: [TopicPartition: Quarantine], nowMilliseconds: Int64)
        -> [ShardStatus]
    {
        let (views, stored) = state.withLock { (Array($0.views.values), $0.stored) }
        return views.map { view in
            var status = view.status
            status.storedOffset = stored[status.topicPartition]?.offset
            var oldestPending = view.leftoverOldestPending
            if let pipeline = view.pipeline {
                status.inFlight = pipeline.inFlight
                status.add(pipeline.counters)
                oldestPending = pipeline.oldestPendingTimestamp
            }
            let cached = consumer?.cachedWatermarks(for: status.topicPartition)?.high
            status.highWatermark = [cached, view.queriedHighWatermark].compactMap { $0 }.max()
            status.position = consumer?.position(of: status.topicPartition)
            status.pauseReasons = consumer?.pauseReasons(for: status.topicPartition) ?? []
            status.quarantine = quarantines[status.topicPartition]
            if let oldestPending {
                status.lagSeconds = Double(max(0, nowMilliseconds - oldestPending)) / 1000
            } else {
                status.lagSeconds = status.lag == 0 ? 0 : nil
            }
            return status
        }.sorted { $0.topicPartition < $1.topicPartition }
    }

    /// Each shard's state, by partition.
    var states: [TopicPartition: ShardState] { state.withLock { $0.views.mapValues(\.status.state) } }

    /// The partitions shown, and those of them with no stored offset yet (their committed offset is asked for).
    var partitionsForLag: (all: [TopicPartition], withoutStore: [TopicPartition]) {
        state.withLock { state in
            (
                Array(state.views.keys),
                state.views.keys.filter { state.stored[$0] == nil }
            )
        }
    }

    /// What the lag refresher learned: high watermarks and committed offsets.
    func noteLag(highs: [TopicPartition: Int64], committed: [TopicPartition: Int64]) {
        state.withLock { state in
            for (topicPartition, high) in highs { state.views[topicPartition]?.queriedHighWatermark = high }
            for (topicPartition, offset) in committed { state.views[topicPartition]?.status.committedOffset = offset }
        }
    }

    // MARK: Counters

    func countCrash() { state.withLock { $0.crashes += 1 } }
    func countRestart() { state.withLock { $0.restarts += 1 } }
    var crashesAndRestarts: (crashes: Int, restarts: Int) { state.withLock { ($0.crashes, $0.restarts) } }

    // MARK: Stored offsets

    /// Pipelines running now.
    var runningPipelines: Int { state.withLock { $0.running.count } }

    /// A pipeline started: its watermark is stored as it advances.
    func pipelineStarted(_ pipeline: ShardPipeline) {
        state.withLock { state in
            state.running[pipeline.generation] = pipeline
            state.current[pipeline.topicPartition] = pipeline.generation
        }
    }

    /// A pipeline ended: its last watermark is stored, and no more.
    func pipelineEnded(_ pipeline: ShardPipeline, consumer: any ShardConsumer) {
        state.withLock { state in
            state.running.removeValue(forKey: pipeline.generation)
            state.due.remove(pipeline.generation)
        }
        storeWatermark(pipeline, consumer: consumer)
    }

    /// A running pipeline's watermark may have moved (the pipeline says so once until it is looked at): it is
    /// stored at the storer's next turn.
    func progressed(_ pipeline: ShardPipeline) {
        let first = state.withLock { state -> Bool in
            guard state.running[pipeline.generation] != nil else { return false }
            let wasIdle = state.due.isEmpty
            state.due.insert(pipeline.generation)
            return wasIdle
        }
        if first { wakeContinuation.yield() }
    }

    /// Stores the watermarks of the pipelines that progressed since their last store.
    func storeDue(consumer: any ShardConsumer) {
        let due = state.withLock { state -> [ShardPipeline] in
            defer { state.due.removeAll(keepingCapacity: true) }
            return state.due.compactMap { state.running[$0] }
        }
        for pipeline in due {
            // Cleared before the watermark is read: progress from now on is told again.
            pipeline.progressPending.store(false, ordering: .releasing)
            storeWatermark(pipeline, consumer: consumer)
        }
    }

    /// Stores the pipeline's watermark if it advanced and the pipeline is its shard's latest one (the fence: an
    /// older pipeline of the shard, or one of a partition released or lost, stores nothing). Returns false when
    /// the fence refused it.
    @discardableResult
    func storeWatermark(_ pipeline: ShardPipeline, consumer: any ShardConsumer) -> Bool {
        // Exactly once: the pipeline's transaction commits its offsets, with its output.
        guard pipeline.transaction == nil, let watermark = pipeline.watermark else { return true }
        let topicPartition = pipeline.topicPartition
        // With the offsets done above it, so whoever reads on from the watermark skips them; stored again when
        // either changes (with one key stuck, the watermark stays while the others finish).
        let metadata = CommitMetadata.encode(done: pipeline.doneAboveWatermark, above: watermark)
        enum Decision { case store, unchanged, notCurrent }
        let decision = state.withLock { state -> Decision in
            guard state.current[topicPartition] == pipeline.generation else { return .notCurrent }
            if let stored = state.stored[topicPartition], stored.offset == watermark, stored.metadata == metadata {
                return .unchanged
            }
            state.stored[topicPartition] = (watermark, metadata)
            return .store
        }
        switch decision {
        case .notCurrent: return false
        case .unchanged: return true
        case .store: break
        }
        do {
            try consumer.storeOffsets([TopicPartitionOffset(topicPartition, offset: watermark, metadata: metadata)])
        } catch {
            logger.debug(
                "offset not stored", metadata: ["kafka.partition": "\(topicPartition)", "kafka.error": "\(error)"])
        }
        return true
    }
}
