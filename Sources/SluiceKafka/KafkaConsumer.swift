import Crdkafka
import Logging
import Synchronization

/// A Kafka group consumer built for per-partition pipelines.
///
/// ## Threading model
///
/// Each consumer has one dedicated OS thread, its *owner*. The owner is the only thread that calls the
/// librdkafka functions whose order matters: subscribe, (incremental) assign and unassign, pause, resume,
/// seek, batch consume, commit and close. That makes librdkafka 2.0.2's race between batch consume and
/// pause/resume/seek/rebalance impossible (see ``Librdkafka/knownHazards``). The owner never blocks in
/// librdkafka: it sleeps in `poll(2)` on an `eventfd` that librdkafka writes when any of the consumer's
/// queues becomes non-empty (`rd_kafka_queue_io_event_enable`) and that Swift code writes when it sends
/// the owner a command. No librdkafka call ever runs on Swift's cooperative thread pool; the few
/// blocking queries (committed offsets, watermarks, metadata) run on Dispatch worker threads.
///
/// Each assigned partition has its own librdkafka queue (`rd_kafka_queue_get_partition`, forwarded away
/// from the consumer queue), so a paused or slow partition never holds up another. The owner drains each
/// queue in batches into that partition's ``KafkaPartitionMessages`` buffer and pauses a partition whose
/// buffer is full (reason ``KafkaPauseReason/flowControl``) until its reader has taken half of it. The
/// consumer queue carries only rebalance, commit, error and log events.
///
/// ## Offsets
///
/// `enable.auto.offset.store` is off: only offsets passed to ``storeOffsets(_:)`` are committed, every
/// ``KafkaConsumerConfiguration/commitInterval``, on ``commit(timeout:)``, before revoked partitions are
/// released and on ``close()``.
///
/// ## Hazards of librdkafka 2.0.2 this type makes impossible
///
/// - Resuming a partition that is not paused rewinds it: pause state is a set of reasons per partition,
///   reconciled with what librdkafka has (tracked across assignments, since librdkafka keeps a pause across
///   unassign and re-assign); librdkafka is told to resume only a partition it has paused.
/// - Closing a cooperative-sticky consumer during its first rebalance (after the group answered its
///   JoinGroup, before its SyncGroup) aborts the process: ``close()`` waits for the first assignment, up to
///   ``KafkaConsumerConfiguration/closeTimeout``; then a consumer the group never answered is destroyed
///   without the leave handshake, and one still in its first rebalance is closed in the background once
///   the rebalance completes.
/// - `rd_kafka_poll` after `rd_kafka_poll_set_consumer` asserts: it is never called.
/// - Any queue poll resets `max.poll.interval.ms`, so librdkafka cannot detect a stuck handler: callers
///   need their own watchdog.
///
/// ## The embedded cluster (librdkafka's mock, 2.0.2)
///
/// Its group coordinator waits 3 s before the first join completes, needs `session.timeout.ms` above
/// 3000 (use 6000 in tests), makes later rebalances wait `session.timeout.ms` − 1 s unless every member
/// rejoins, and rejects commits while the group is joining (real Kafka accepts them) with
/// `ILLEGAL_GENERATION`, which makes librdkafka declare the member's whole assignment lost
/// (``KafkaConsumerEvent/lost(_:)`` instead of ``KafkaConsumerEvent/revoked(_:)``). Periodic commits run
/// only when offsets were stored since the last one, which narrows that window; ``commit(timeout:)`` retries
/// rejected commits for a while.
public final class KafkaConsumer: Sendable {
    /// Decides, at assignment and before the first fetch, the pause reasons a new partition starts with.
    public typealias InitialPauseReasons = @Sendable (TopicPartition) -> Set<KafkaPauseReason>

    let shared: ConsumerShared

    /// Group membership changes. Iterate it from one task; it ends when the consumer is closed.
    public let events: AsyncStream<KafkaConsumerEvent>

    /// Creates a consumer and starts its owner thread. It joins the group on ``subscribe(topics:)``.
    ///
    /// - Throws: ``KafkaError`` with code ``KafkaError/Code/configuration`` naming the property that
    ///   librdkafka rejected.
    public init(
        configuration: KafkaConsumerConfiguration,
        initialPauseReasons: @escaping InitialPauseReasons = { _ in [] },
        logger: Logger
    ) throws(KafkaError) {
        Librdkafka.logVersionOnce(logger)
        let properties = try configuration.librdkafkaProperties(followJoinState: true)
        let handle = try RDKafkaHandle(
            type: RD_KAFKA_CONSUMER,
            properties: properties,
            events: RD_KAFKA_EVENT_REBALANCE | RD_KAFKA_EVENT_OFFSET_COMMIT | RD_KAFKA_EVENT_ERROR
                | RD_KAFKA_EVENT_LOG,
            logger: "consumer"
        )
        let (stream, continuation) = AsyncStream.makeStream(of: KafkaConsumerEvent.self)
        self.events = stream
        self.shared = ConsumerShared(
            handle: handle,
            configuration: configuration,
            initialPauseReasons: initialPauseReasons,
            events: continuation,
            logger: logger
        )
        let loop = ConsumerLoop(shared: shared)
        OwnerThread.start(name: "sluice-consumer") { loop.run() }
    }

    deinit {
        shared.send(.close(nil))
    }

    /// Joins the group, subscribed to `topics`.
    public func subscribe(topics: [String]) async throws {
        try await withCheckedThrowingContinuation { continuation in
            shared.send(.subscribe(topics, continuation))
        }
    }

    /// Where a process of this group that died got to with its partitions (per partition the offset to start at,
    /// with commit metadata naming what is done above it), by the id of the Kafka cluster it was connected to; to
    /// be called before ``subscribe(topics:)``. The partitions of this consumer's first assignment that the
    /// positions of its own cluster name start there instead of at the group's commit, when it is past the
    /// commit (and at most at the high watermark), and that position is stored to be committed: what the dead
    /// process finished is not fetched again. Partitions that come later start from the group's commit, as
    /// another member may have handled them since.
    public func resume(from positions: [String: [TopicPartitionOffset]]) {
        shared.pendingResume.withLock { pending in
            pending = positions.mapValues { positions in
                Dictionary(positions.map { ($0.topicPartition, $0) }) { first, second in
                    first.offset >= second.offset ? first : second
                }
            }
        }
    }

    /// The id of the Kafka cluster the consumer is connected to, once its metadata says it (no request).
    public var clusterID: String? {
        try? shared.withHandle { handle throws(KafkaError) in handle.clusterID(timeout: .zero) }
    }

    /// The position `topicPartition` was started at by ``resume(from:)``, with its metadata, while it is assigned.
    public func resumedPosition(of topicPartition: TopicPartition) -> TopicPartitionOffset? {
        shared.resumed.withLock { $0[topicPartition] }
    }

    /// The messages of an assigned partition, or `nil` when it is not assigned to this consumer.
    public func messages(for topicPartition: TopicPartition) -> KafkaPartitionMessages? {
        shared.channels.withLock { $0[topicPartition] }.map { KafkaPartitionMessages(channel: $0) }
    }

    /// How long ago the consumer's owner thread last went round its loop (it wakes at least every 200 ms
    /// while open). For health checks.
    public var timeSinceLastActivity: Duration {
        let nanoseconds = shared.lastLoop.load(ordering: .relaxed)
        return (ContinuousClock.now - ConsumerShared.epoch) - .nanoseconds(nanoseconds)
    }

    /// The fatal error librdkafka raised, if it did: the consumer no longer consumes or commits and must be
    /// replaced (restart the process).
    public var fatalError: KafkaError? { shared.fatalError.withLock { $0 } }

    /// How many commits failed since the consumer started (periodic ones are retried with backoff; commits
    /// refused while the group rebalances count too).
    public var commitFailureCount: Int { shared.commitFailures.load(ordering: .relaxed) }

    /// The partitions currently assigned to this consumer.
    public var assignment: Set<TopicPartition> {
        Set(shared.channels.withLock { $0.keys })
    }

    /// Sets the whole set of reasons the partition should be paused for (desired state, not a delta): it
    /// fetches exactly while the set, and the consumer's own ``KafkaPauseReason/flowControl``, are empty.
    /// Messages already handed to its ``KafkaPartitionMessages`` buffer still arrive. Returns once the
    /// consumer's thread applied it; no effect on a partition that is not assigned (a new assignment starts
    /// with ``InitialPauseReasons``).
    ///
    /// Calling it again with the same set changes nothing: librdkafka is told only what differs from what it
    /// has, which the consumer tracks across assignments (librdkafka keeps a pause across unassign and
    /// re-assign, and librdkafka before 2.4.0 rewinds a partition resumed while not paused).
    public func setPauseReasons(_ reasons: Set<KafkaPauseReason>, for topicPartition: TopicPartition) async {
        await setPauseReasons([topicPartition: reasons])
    }

    /// Sets the pause reasons of many partitions in one round trip to the consumer's thread (a flag for a topic
    /// of thousands of partitions, a shutdown): each partition as ``setPauseReasons(_:for:)`` would.
    public func setPauseReasons(_ reasons: [TopicPartition: Set<KafkaPauseReason>]) async {
        guard !reasons.isEmpty else { return }
        await withCheckedContinuation { continuation in
            shared.send(.setPauseReasons(reasons, continuation))
        }
    }

    /// Restarts the partition's fetcher if it delivered nothing since it was assigned: librdkafka leaves an
    /// assigned partition unstarted when it could not fetch its committed offset, and there are paths where
    /// it says nothing. For an owner that sees the partition stalled with messages waiting. A partition that
    /// delivered messages, is revoked or is not assigned is left alone.
    public func restartFetcherIfUnstarted(_ topicPartition: TopicPartition) {
        shared.send(.restartUnstarted(topicPartition))
    }

    /// Logs, from the consumer's side, why a partition its owner sees stalled makes no progress: what it
    /// fetched in this assignment, what its librdkafka queue and its buffer hold, its pause state. For an
    /// owner that reports a stall, once per stall.
    public func reportStall(_ topicPartition: TopicPartition) {
        shared.send(.reportStall(topicPartition))
    }

    /// The reasons the partition is paused for (empty when it is fetching or not assigned).
    public func pauseReasons(for topicPartition: TopicPartition) -> Set<KafkaPauseReason> {
        shared.pauseSnapshot.withLock { $0[topicPartition] ?? [] }
    }

    /// The offset ``seek(_:to:)`` understands as "the group's committed offset"; with nothing committed,
    /// where `auto.offset.reset` points. (librdkafka 2.0.2 does not resolve its own logical
    /// `RD_KAFKA_OFFSET_STORED` in a seek of a paused partition, so the consumer resolves it first.)
    public static let committedOffset = Int64(RD_KAFKA_OFFSET_STORED)

    /// Moves the partition's fetch position to `offset` (or ``committedOffset``) and drops the messages
    /// buffered for it.
    public func seek(_ topicPartition: TopicPartition, to offset: Int64) async throws {
        var target = offset
        if offset == Self.committedOffset {
            if let committed = try await committedOffsets(for: [topicPartition])[topicPartition] {
                target = committed
            } else {
                let watermarks = try await queryWatermarks(for: topicPartition)
                target = shared.configuration.autoOffsetReset == .earliest ? watermarks.low : watermarks.high
            }
        }
        let position = TopicPartitionOffset(topicPartition, offset: target)
        try await withCheckedThrowingContinuation { continuation in
            shared.send(.seek(position, continuation))
        }
    }

    /// Stores offsets of completed work, to be committed. Each offset is the *next* offset to consume
    /// (the last completed one + 1).
    public func storeOffsets(_ offsets: [TopicPartitionOffset]) throws(KafkaError) {
        guard !offsets.isEmpty else { return }
        try shared.withHandle { handle throws(KafkaError) in
            let list = TopicPartitionList.make(offsets)
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let error = rd_kafka_offsets_store(handle.pointer, list)
            if error != RD_KAFKA_RESP_ERR_NO_ERROR {
                if let (tp, partitionError) = TopicPartitionList.firstError(list) {
                    throw KafkaError.rdkafka(partitionError, context: "storing the offset of \(tp)")
                }
                throw KafkaError.rdkafka(error, context: "storing offsets")
            }
            // librdkafka took them (the partitions are assigned): keep them, with their metadata, for commits.
            // Commits send only those of partitions assigned then, and an assignment starts from none.
            shared.storedProgress.withLock { progress in
                for offset in offsets { progress[offset.topicPartition] = offset }
            }
        }
        shared.offsetsStored.store(true, ordering: .relaxed)
    }

    /// Commits the stored offsets and waits for the broker's answer. Errors the group coordinator
    /// returns while the group rebalances are retried for up to `timeout`.
    public func commit(timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                try await withCheckedThrowingContinuation { continuation in
                    shared.send(.commit(continuation))
                }
                return
            } catch let error as KafkaError where error.isRetriableCommitError && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// The committed offsets of `partitions` (the next offset to consume; missing when none committed).
    public func committedOffsets(
        for partitions: [TopicPartition],
        timeout: Duration = .seconds(10)
    ) async throws -> [TopicPartition: Int64] {
        try await committedProgress(for: partitions, timeout: timeout).mapValues(\.offset)
    }

    /// The committed offsets of `partitions` with their commit metadata (one round trip to the coordinator).
    /// Partitions without a committed offset are left out.
    public func committedProgress(
        for partitions: [TopicPartition],
        timeout: Duration = .seconds(10)
    ) async throws -> [TopicPartition: TopicPartitionOffset] {
        try await shared.blocking { handle throws(KafkaError) in try handle.committed(partitions, timeout: timeout) }
    }

    /// The partition's fetch position: the offset of the next message librdkafka hands out, if known.
    public func position(of topicPartition: TopicPartition) -> Int64? {
        try? shared.withHandle { handle throws(KafkaError) in
            let list = TopicPartitionList.make([topicPartition])
            defer { rd_kafka_topic_partition_list_destroy(list) }
            guard rd_kafka_position(handle.pointer, list) == RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
            let offset = list.pointee.elems[0].offset
            return offset >= 0 ? offset : nil
        }
    }

    /// The partition's watermarks as of its last fetch (no request), or `nil` before the first fetch.
    public func cachedWatermarks(for topicPartition: TopicPartition) -> Watermarks? {
        try? shared.withHandle { handle throws(KafkaError) in
            var low: Int64 = -1
            var high: Int64 = -1
            let error = rd_kafka_get_watermark_offsets(
                handle.pointer, topicPartition.topic, topicPartition.partition, &low, &high)
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR, high >= 0 else { return nil }
            return Watermarks(low: max(low, 0), high: high)
        }
    }

    /// Asks the partition leader for the partition's watermarks.
    public func queryWatermarks(for topicPartition: TopicPartition, timeout: Duration = .seconds(10)) async throws
        -> Watermarks
    {
        try await shared.blocking { handle throws(KafkaError) in
            try handle.queryWatermarks(topicPartition, timeout: timeout)
        }
    }

    /// Asks the partition leaders for the high watermarks of `partitions`, in one round trip per leader
    /// (also for paused partitions, whose cached watermarks are not refreshed). Partitions whose query failed
    /// are missing from the result.
    public func queryHighWatermarks(for partitions: [TopicPartition], timeout: Duration = .seconds(10)) async throws
        -> [TopicPartition: Int64]
    {
        try await shared.blocking { handle throws(KafkaError) in
            try handle.queryWatermarks(partitions, end: true, timeout: timeout)
        }
    }

    /// Where each of `partitions` starts for a member with no committed offset (`autoOffsetReset`): the low
    /// watermark (earliest) or the high one (latest), in one round trip per leader.
    public func queryResetOffsets(for partitions: [TopicPartition], timeout: Duration = .seconds(10)) async throws
        -> [TopicPartition: Int64]
    {
        let end = shared.configuration.autoOffsetReset != .earliest
        return try await shared.blocking { handle throws(KafkaError) in
            try handle.queryWatermarks(partitions, end: end, timeout: timeout)
        }
    }

    /// Whether the cluster has `topic` (asking creates nothing, whatever the broker's auto-creation).
    public func topicExists(_ topic: String, timeout: Duration = .seconds(10)) async throws -> Bool {
        try await shared.blocking { handle throws(KafkaError) in
            try handle.topicExists(topic, timeout: timeout)
        }
    }

    /// Every topic of the cluster and its partition count (asking creates nothing).
    public func topics(timeout: Duration = .seconds(10)) async throws -> [String: Int] {
        try await shared.blocking { handle throws(KafkaError) in try handle.topics(timeout: timeout) }
    }

    /// The number of partitions of `topic`, from the cluster's metadata.
    public func partitionCount(topic: String, timeout: Duration = .seconds(10)) async throws -> Int {
        try await shared.blocking { handle throws(KafkaError) in
            try handle.partitionCount(topic: topic, timeout: timeout)
        }
    }

    /// Commits stored offsets, leaves the group (releasing every partition) and destroys the client.
    /// Every message sequence and ``events`` end. Safe to call more than once.
    ///
    /// Returns within ``KafkaConsumerConfiguration/closeTimeout``, with every sequence and ``events`` ended.
    /// What is left then (a first rebalance to wait out, a leave handshake with a slow coordinator, and
    /// librdkafka's own teardown, which can take seconds when brokers are unreachable) finishes on the
    /// consumer's thread afterwards.
    public func close() async {
        await withCheckedContinuation { continuation in
            shared.send(.close(continuation))
        }
    }
}

extension KafkaError {
    /// Commit errors that mean the group is rebalancing (or this member is out of date), so the member is
    /// about to rejoin.
    var isRebalanceSignal: Bool {
        guard let librdkafkaCode else { return false }
        switch rd_kafka_resp_err_t(librdkafkaCode) {
        case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION,
            RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID:
            return true
        default:
            return false
        }
    }

    /// Commit errors a group coordinator returns while the group is rebalancing or moving.
    var isRetriableCommitError: Bool {
        guard let librdkafkaCode else { return false }
        switch rd_kafka_resp_err_t(librdkafkaCode) {
        case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR__WAIT_COORD, RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR__TIMED_OUT:
            return true
        default:
            return false
        }
    }
}
