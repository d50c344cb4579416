import Crdkafka
import Logging

/// The state and work of a ``KafkaConsumer``'s owner thread.
///
/// `@unchecked Sendable`: it is created on the caller's thread and from then on touched only by the
/// owner thread that ``run()`` runs on; what others need is in ``ConsumerShared``.
final class ConsumerLoop: @unchecked Sendable {
    final class PartitionState {
        let topicPartition: TopicPartition
        let queue: OpaquePointer
        let channel: PartitionChannel
        /// The reasons its owner wants it paused for, set whole by ``KafkaConsumer/setPauseReasons(_:for:)``.
        var desired: Set<KafkaPauseReason> = []
        /// Whether its buffer is full (the consumer's own reason, ``KafkaPauseReason/flowControl``).
        var flowControl = false
        /// Whether its pause state still has to be applied for the first time in this assignment.
        var newlyAssigned = true
        /// Set at revocation: no more messages are taken from its queue.
        var revoking = false
        /// Whether a message came from it in this assignment (its fetcher started).
        var delivered = false
        /// Messages taken from its queue in this assignment, and the offset of the last one.
        var deliveredMessages = 0
        var lastDeliveredOffset: Int64?
        /// When to restart its fetcher: librdkafka could not fetch its committed offset and will not try again.
        var restartAt: ContinuousClock.Instant?
        /// Restarts so far in this assignment (the backoff grows with them).
        var restarts = 0

        /// Every reason it is paused for.
        var reasons: Set<KafkaPauseReason> { flowControl ? desired.union([.flowControl]) : desired }

        init(topicPartition: TopicPartition, queue: OpaquePointer, channel: PartitionChannel) {
            self.topicPartition = topicPartition
            self.queue = queue
            self.channel = channel
        }
    }

    struct Revocation {
        var partitions: [TopicPartition]
        var deadline: ContinuousClock.Instant
        var commitID: UInt64?
    }

    let shared: ConsumerShared
    let logger: Logger
    let rk: OpaquePointer
    let consumerQueue: OpaquePointer
    var partitions: [TopicPartition: PartitionState] = [:]
    /// What librdkafka has paused, across assignments.
    var pauses = PauseReconciler()
    /// Holds commits while the group rebalances (librdkafka before 2.10 loses the assignment otherwise).
    var rebalanceGate: RebalanceCommitGate
    var revocations: [UInt64: Revocation] = [:]
    /// Commits out and to come: callers, revocations, the close's, the periodic one.
    var commits: CommitLedger<CheckedContinuation<Void, any Error>>
    var nextIdentifier: UInt64 = 1
    /// The close, from the first `close()` to the destroyed handle.
    var close: CloseStateMachine
    /// The callers of `close()`, until the consumer is closed or they are released.
    var closeWaiters: [CheckedContinuation<Void, Never>] = []
    let batchBuffer: UnsafeMutablePointer<UnsafeMutablePointer<rd_kafka_message_t>?>
    let maxBatch: Int

    init(shared: ConsumerShared) {
        self.shared = shared
        self.logger = shared.logger
        self.rk = shared.handle.pointer
        // Route the main queue (errors, logs, commit results) into the consumer queue; from here on
        // rd_kafka_poll must never be called on this handle (hazard), and this type never does.
        rd_kafka_poll_set_consumer(rk)
        self.consumerQueue = rd_kafka_queue_get_consumer(rk)
        self.maxBatch = shared.configuration.maxBatchSize
        self.batchBuffer = .allocate(capacity: maxBatch)
        self.commits = CommitLedger(commitInterval: shared.configuration.commitInterval, now: .now)
        self.close = CloseStateMachine(closeTimeout: shared.configuration.closeTimeout)
        self.rebalanceGate = RebalanceCommitGate(limit: max(.seconds(30), shared.configuration.sessionTimeout * 3))
        shared.waker.payload.withUnsafeBytes { payload in
            rd_kafka_queue_io_event_enable(
                consumerQueue, shared.waker.fileDescriptor, payload.baseAddress, payload.count)
        }
    }

    deinit { batchBuffer.deallocate() }

    /// The owner thread's loop; returns once the consumer is closed and destroyed.
    func run() {
        while true {
            shared.noteLoop()
            var busy = false
            let inbox = shared.takeInbox()
            for command in inbox.commands { handle(command) }
            for topicPartition in inbox.resumeRequests { setFlowControl(false, topicPartition) }
            busy = serveConsumerQueue() || busy
            if close.isFinished { break }
            busy = servePartitions() || busy
            let now = ContinuousClock.now
            serveTimers(now: now)
            if close.isFinished { break }
            if !busy { shared.waker.wait(milliseconds: waitBudget(now: now)) }
        }
        shared.eventsContinuation.finish()
        releaseCloseWaiters()
    }

    func releaseCloseWaiters() {
        let waiters = closeWaiters
        closeWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Commands

    func handle(_ command: ConsumerShared.Command) {
        if close.isFinished {
            failAfterClose(command)
            return
        }
        switch command {
        case .subscribe(let topics, let continuation):
            let list = TopicPartitionList.make(topics.map { TopicPartition($0, RD_KAFKA_PARTITION_UA) })
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let error = rd_kafka_subscribe(rk, list)
            if error == RD_KAFKA_RESP_ERR_NO_ERROR {
                close.subscribed()
                logger.info("subscribed", metadata: ["kafka.topics": "\(topics.joined(separator: ","))"])
                continuation.resume()
            } else {
                continuation.resume(throwing: KafkaError.rdkafka(error, context: "subscribing to \(topics)"))
            }
        case .setPauseReasons(let reasons, let continuation):
            for (topicPartition, reasons) in reasons {
                guard let state = partitions[topicPartition] else { continue }
                state.desired = reasons.subtracting([.flowControl])
                reconcilePause(state)
            }
            continuation.resume()
        case .seek(let position, let continuation):
            continuation.resume(with: Result { try seek(position) })
        case .commit(let continuation):
            if rebalanceGate.isHolding(now: .now) {
                // Retriable: `commit()` tries again until its timeout; the rebalance usually ends first.
                continuation.resume(
                    throwing: KafkaError.rdkafka(
                        RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
                        context: "committing offsets (held while the group rebalances)"))
            } else {
                commits.callerAsked(continuation)
                startCallersCommitIfIdle()
            }
        case .restartUnstarted(let topicPartition):
            if let state = partitions[topicPartition] {
                schedule(
                    restartOf: [state],
                    why: "it is assigned and has delivered nothing while its owner saw messages waiting")
            }
        case .reportStall(let topicPartition):
            reportStall(topicPartition)
        case .releaseRevocation(let identifier):
            if var revocation = revocations[identifier], revocation.commitID == nil {
                revocation.commitID = startCommit(.revocation(identifier), timeout: .seconds(5))
                revocations[identifier] = revocation
            }
        case .close(let continuation):
            let wasRunning = close.isRunning
            guard close.closeRequested(now: .now) else {
                continuation?.resume()
                return
            }
            if let continuation { closeWaiters.append(continuation) }
            if wasRunning { logger.debug("consumer close requested") }
        }
    }

    func failAfterClose(_ command: ConsumerShared.Command) { command.failClosed() }

    // MARK: Pause reasons

    /// Brings librdkafka's pause state of the partition to its reasons (docs/architecture.md §5): paused exactly while
    /// it has one. ``PauseReconciler`` decides the call, knowing what librdkafka kept from an earlier
    /// assignment and never resuming what librdkafka does not have paused.
    func reconcilePause(_ state: PartitionState) {
        let reasons = state.reasons
        shared.pauseSnapshot.withLock { $0[state.topicPartition] = reasons }
        let afterAssignment = state.newlyAssigned
        state.newlyAssigned = false
        guard let call = pauses.call(for: state.topicPartition, desired: reasons, afterAssignment: afterAssignment)
        else {
            return
        }
        let list = TopicPartitionList.make([state.topicPartition])
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let error = call == .pause ? rd_kafka_pause_partitions(rk, list) : rd_kafka_resume_partitions(rk, list)
        if error == RD_KAFKA_RESP_ERR_NO_ERROR, TopicPartitionList.firstError(list) == nil {
            pauses.applied(call, to: state.topicPartition)
            logger.trace(
                call == .pause ? "partition paused" : "partition resumed",
                metadata: metadata(state.topicPartition, ["sluice.pauseReasons": "\(reasons)"])
            )
        } else {
            let partitionError = TopicPartitionList.firstError(list)?.1 ?? error
            logger.error(
                call == .pause ? "pausing a partition failed" : "resuming a partition failed",
                metadata: metadata(
                    state.topicPartition, ["kafka.error": "\(String(cString: rd_kafka_err2str(partitionError)))"])
            )
        }
    }

    func seek(_ position: TopicPartitionOffset) throws(KafkaError) {
        guard let state = partitions[position.topicPartition], !state.revoking else {
            throw KafkaError.state("cannot seek \(position.topicPartition): it is not assigned to this consumer")
        }
        let list = TopicPartitionList.make([position])
        defer { rd_kafka_topic_partition_list_destroy(list) }
        // Asynchronous seek: librdkafka bumps the partition's version at once, so messages fetched for
        // the old position are dropped by the next batch consume.
        if let error = rd_kafka_seek_partitions(rk, list, 0) {
            throw KafkaError.consuming(error, context: "seeking \(position)")
        }
        state.channel.discardBuffered()
        logger.debug(
            "partition seek", metadata: metadata(position.topicPartition, ["kafka.offset": "\(position.offset)"]))
    }

    // MARK: Timers

    func serveTimers(now: ContinuousClock.Instant) {
        if rebalanceGate.expired(now: now) {
            logger.warning("the group rebalance did not end with an assignment in time; committing again")
        }
        restartDueFetchers(now: now)
        if mayCommitPeriodically(now: now), commits.periodicDue(now: now) {
            if !partitions.isEmpty, shared.offsetsStored.exchange(false, ordering: .relaxed) {
                startCommit(.periodic, timeout: .seconds(30))
            }
        }
        for identifier in commits.expired(now: now) {
            completeCommit(identifier, error: RD_KAFKA_RESP_ERR__TIMED_OUT)
        }
        for (identifier, revocation) in revocations where revocation.commitID == nil && now >= revocation.deadline {
            logger.warning(
                "revoked partitions not released by their owner in time; committing and releasing them",
                metadata: ["kafka.partitions": "\(describe(revocation.partitions))"])
            revocations[identifier]!.commitID = startCommit(.revocation(identifier), timeout: .seconds(5))
        }
        let actions = close.tick(
            now: now, neverJoined: String(cString: rd_kafka_rebalance_protocol(rk)) == "NONE",
            consumerClosed: rd_kafka_consumer_closed(rk) != 0)
        for action in actions { perform(action) }
    }

    func waitBudget(now: ContinuousClock.Instant) -> Int32 {
        // The periodic commit is only due while running (it is not rescheduled afterwards, and a deadline in
        // the past would make this loop spin while a close waits for the first join).
        var next = now + .milliseconds(200)
        if let commitDeadline = commits.nextDeadline(periodicAllowed: mayCommitPeriodically(now: now)) {
            next = min(next, commitDeadline)
        }
        for revocation in revocations.values where revocation.commitID == nil { next = min(next, revocation.deadline) }
        for state in partitions.values { if let restartAt = state.restartAt { next = min(next, restartAt) } }
        if let closeDeadline = close.nextDeadline(now: now) { next = min(next, closeDeadline) }
        let milliseconds = (next - now).milliseconds
        return Int32(clamping: max(0, min(milliseconds, 200)))
    }

    // MARK: Logging

    func metadata(_ topicPartition: TopicPartition, _ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        var result = extra
        result["kafka.topic"] = "\(topicPartition.topic)"
        result["kafka.partition"] = "\(topicPartition.partition)"
        return result
    }

    func describe(_ list: [TopicPartition]) -> String {
        list.sorted().map(\.description).joined(separator: ",")
    }
}
