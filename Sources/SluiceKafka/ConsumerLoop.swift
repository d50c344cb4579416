import Crdkafka
import Logging

/// The state and work of a ``KafkaConsumer``'s owner thread.
///
/// `@unchecked Sendable`: it is created on the caller's thread and from then on touched only by the
/// owner thread that ``run()`` runs on; what others need is in ``ConsumerShared``.
final class ConsumerLoop: @unchecked Sendable {
    private final class PartitionState {
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

    private struct Revocation {
        var partitions: [TopicPartition]
        var deadline: ContinuousClock.Instant
        var commitID: UInt64?
    }

    private let shared: ConsumerShared
    private let logger: Logger
    private let rk: OpaquePointer
    private let consumerQueue: OpaquePointer
    private var partitions: [TopicPartition: PartitionState] = [:]
    /// What librdkafka has paused, across assignments.
    private var pauses = PauseReconciler()
    /// Holds commits while the group rebalances (librdkafka before 2.10 loses the assignment otherwise).
    private var rebalanceGate: RebalanceCommitGate
    private var revocations: [UInt64: Revocation] = [:]
    /// Commits out and to come: callers, revocations, the close's, the periodic one.
    private var commits: CommitLedger<CheckedContinuation<Void, any Error>>
    private var nextIdentifier: UInt64 = 1
    /// The close, from the first `close()` to the destroyed handle.
    private var close: CloseStateMachine
    /// The callers of `close()`, until the consumer is closed or they are released.
    private var closeWaiters: [CheckedContinuation<Void, Never>] = []
    private let batchBuffer: UnsafeMutablePointer<UnsafeMutablePointer<rd_kafka_message_t>?>
    private let maxBatch: Int

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
            rd_kafka_queue_io_event_enable(consumerQueue, shared.waker.fileDescriptor, payload.baseAddress, payload.count)
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

    private func releaseCloseWaiters() {
        let waiters = closeWaiters
        closeWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Commands

    private func handle(_ command: ConsumerShared.Command) {
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
                continuation.resume(throwing: KafkaError.rdkafka(
                    RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, context: "committing offsets (held while the group rebalances)"))
            } else {
                commits.callerAsked(continuation)
                startCallersCommitIfIdle()
            }
        case .restartUnstarted(let topicPartition):
            if let state = partitions[topicPartition] {
                schedule(restartOf: [state], why: "it is assigned and has delivered nothing while its owner saw messages waiting")
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

    private func failAfterClose(_ command: ConsumerShared.Command) { command.failClosed() }

    // MARK: Pause reasons

    /// Brings librdkafka's pause state of the partition to its reasons (docs/architecture.md §5): paused exactly while
    /// it has one. ``PauseReconciler`` decides the call, knowing what librdkafka kept from an earlier
    /// assignment and never resuming what librdkafka does not have paused.
    private func reconcilePause(_ state: PartitionState) {
        let reasons = state.reasons
        shared.pauseSnapshot.withLock { $0[state.topicPartition] = reasons }
        let afterAssignment = state.newlyAssigned
        state.newlyAssigned = false
        guard let call = pauses.call(for: state.topicPartition, desired: reasons, afterAssignment: afterAssignment) else {
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
                metadata: metadata(state.topicPartition, ["kafka.error": "\(String(cString: rd_kafka_err2str(partitionError)))"])
            )
        }
    }

    private func seek(_ position: TopicPartitionOffset) throws(KafkaError) {
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
        logger.debug("partition seek", metadata: metadata(position.topicPartition, ["kafka.offset": "\(position.offset)"]))
    }

    // MARK: Consumer queue

    private func serveConsumerQueue() -> Bool {
        var served = 0
        while served < 256, let event = rd_kafka_queue_poll(consumerQueue, 0) {
            served += 1
            defer { rd_kafka_event_destroy(event) }
            switch rd_kafka_event_type(event) {
            case RD_KAFKA_EVENT_REBALANCE:
                handleRebalance(event)
            case RD_KAFKA_EVENT_OFFSET_COMMIT:
                handleCommitResult(event)
            case RD_KAFKA_EVENT_ERROR:
                let code = rd_kafka_event_error(event)
                let error = KafkaError(
                    code: .librdkafka,
                    message: String(cString: rd_kafka_event_error_string(event)),
                    librdkafkaCode: code.rawValue,
                    isFatal: rd_kafka_event_error_is_fatal(event) != 0
                )
                if error.message.hasPrefix("Failed to fetch committed offset") {
                    scheduleRestart(after: event)
                }
                if error.isFatal {
                    // The client cannot go on (librdkafka stops consuming and committing): say so loudly and
                    // keep it for health checks.
                    logger.error("librdkafka fatal error", metadata: ["kafka.error": "\(error.message)"])
                    shared.fatalError.withLock { $0 = $0 ?? error }
                } else {
                    logger.warning("librdkafka error", metadata: ["kafka.error": "\(error.message)"])
                }
                shared.eventsContinuation.yield(.error(error))
            case RD_KAFKA_EVENT_LOG:
                handleLog(event)
            case RD_KAFKA_EVENT_FETCH:
                // Not expected: every partition queue is forwarded away before assignment. Deliver it
                // rather than lose it.
                if let message = rd_kafka_event_message_next(event) {
                    let topicPartition = TopicPartition(
                        String(cString: rd_kafka_topic_name(message.pointee.rkt)), message.pointee.partition)
                    if let state = partitions[topicPartition] {
                        var writer = KafkaBytes.BatchWriter(for: CollectionOfOne(message.pointee))
                        _ = state.channel.push([convert(message, topic: topicPartition.topic, into: &writer)])
                    }
                }
            default:
                break
            }
        }
        return served == 256
    }

    /// Follows the group's join state (hazard `commit-during-join-loses-assignment`), and forwards the log
    /// line unless it is a debug line only Sluice asked for.
    private func handleLog(_ event: OpaquePointer) {
        var facility: UnsafePointer<CChar>?
        var text: UnsafePointer<CChar>?
        var level: Int32 = 0
        guard rd_kafka_event_log(event, &facility, &text, &level) == 0 else { return }
        if let facility, let text, String(cString: facility) == "CGRPJOINSTATE",
            let state = RebalanceCommitGate.joinState(inLogLine: String(cString: text))
        {
            rebalanceGate.joinStateChanged(to: state)
        }
        if level >= 7, KafkaConsumerConfiguration.followsJoinState, !shared.configuration.userWantsDebugLogs { return }
        LibrdkafkaLog.forward(event, to: logger)
    }

    private func handleRebalance(_ event: OpaquePointer) {
        let code = rd_kafka_event_error(event)
        guard let list = rd_kafka_event_topic_partition_list(event) else { return }
        let changed = TopicPartitionList.read(list).map(\.topicPartition)
        switch code {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            rebalanceGate.assigned()
            assign(changed)
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            if rd_kafka_assignment_lost(rk) != 0 {
                rebalanceGate.lost(now: .now)
            } else {
                rebalanceGate.revoked(now: .now)
            }
            revoke(changed)
        default:
            logger.error("rebalance failed", metadata: ["kafka.error": "\(String(cString: rd_kafka_err2str(code)))"])
            // librdkafka expects the application to drop its assignment on a rebalance error.
            release(Array(partitions.keys))
        }
    }

    private func assign(_ added: [TopicPartition]) {
        close.assigned()
        var newStates: [PartitionState] = []
        for topicPartition in added where partitions[topicPartition] == nil {
            guard let queue = rd_kafka_queue_get_partition(rk, topicPartition.topic, topicPartition.partition) else {
                logger.error("no queue for assigned partition", metadata: metadata(topicPartition))
                continue
            }
            // Keep the partition's messages in its own queue, and wake the owner when it fills.
            rd_kafka_queue_forward(queue, nil)
            shared.waker.payload.withUnsafeBytes { payload in
                rd_kafka_queue_io_event_enable(queue, shared.waker.fileDescriptor, payload.baseAddress, payload.count)
            }
            let channel = PartitionChannel(
                topicPartition: topicPartition,
                capacity: shared.configuration.partitionBufferMessages,
                byteShare: shared.bufferBytes,
                requestResume: { [shared] in shared.requestResume($0) }
            )
            let state = PartitionState(topicPartition: topicPartition, queue: queue, channel: channel)
            state.desired = shared.initialPauseReasons(topicPartition).subtracting([.flowControl])
            partitions[topicPartition] = state
            newStates.append(state)
        }
        shared.bufferBytes.assigned(partitions.count)
        // Progress stored for an earlier assignment of these partitions is not this one's.
        shared.storedProgress.withLock { progress in
            for topicPartition in added { progress[topicPartition] = nil }
        }
        let list = TopicPartitionList.make(added)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        if let error = rd_kafka_incremental_assign(rk, list) {
            let failure = KafkaError.consuming(error, context: "incremental assign")
            logger.error("incremental assign failed", metadata: ["kafka.error": "\(failure.message)"])
        }
        // Apply pause reasons before any message is taken from the new queues. librdkafka keeps an
        // application pause across unassign and assign, so a partition handed back may arrive paused.
        for state in newStates { reconcilePause(state) }
        shared.channels.withLock { channels in
            for state in newStates { channels[state.topicPartition] = state.channel }
        }
        logger.info("partitions assigned", metadata: ["kafka.partitions": "\(describe(added))"])
        shared.eventsContinuation.yield(.assigned(added))
    }

    private func revoke(_ revoked: [TopicPartition]) {
        let owned = revoked.filter { partitions[$0] != nil }
        for topicPartition in owned {
            partitions[topicPartition]!.revoking = true
            partitions[topicPartition]!.channel.finish()
        }
        if rd_kafka_assignment_lost(rk) != 0 {
            logger.warning("partitions lost", metadata: ["kafka.partitions": "\(describe(revoked))"])
            release(revoked)
            shared.eventsContinuation.yield(.lost(owned))
            return
        }
        if close.isRunning {
            // Commit what is already stored now, while the group has just synced: by the time the owner is
            // done, a coordinator may be in its next join and reject commits (the embedded cluster does,
            // real Kafka does not). Stored offsets are completed work, so committing early is safe; the
            // commit after done() adds what the owner finished meanwhile.
            startCommit(.periodic, timeout: .seconds(5))
            let identifier = nextIdentifier
            nextIdentifier += 1
            revocations[identifier] = Revocation(
                partitions: revoked, deadline: .now + shared.configuration.revokeTimeout, commitID: nil)
            logger.info("partitions revoked", metadata: ["kafka.partitions": "\(describe(revoked))"])
            let revocation = KafkaRevocation(partitions: owned, identifier: identifier) { [shared] identifier in
                shared.send(.releaseRevocation(identifier))
            }
            shared.eventsContinuation.yield(.revoked(revocation))
        } else {
            // Closing: the final commit already ran.
            release(revoked)
        }
    }

    /// Unassigns partitions and drops their queues and buffers.
    private func release(_ released: [TopicPartition]) {
        let list = TopicPartitionList.make(released)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        if let error = rd_kafka_incremental_unassign(rk, list) {
            let failure = KafkaError.consuming(error, context: "incremental unassign")
            logger.error("incremental unassign failed", metadata: ["kafka.error": "\(failure.message)"])
        }
        for topicPartition in released {
            guard let state = partitions.removeValue(forKey: topicPartition) else { continue }
            state.channel.finish()
            rd_kafka_queue_io_event_enable(state.queue, -1, nil, 0)
            rd_kafka_queue_destroy(state.queue)
        }
        shared.bufferBytes.assigned(partitions.count)
        shared.channels.withLock { channels in
            for topicPartition in released { channels[topicPartition] = nil }
        }
        shared.pauseSnapshot.withLock { snapshot in
            for topicPartition in released { snapshot[topicPartition] = nil }
        }
        shared.storedProgress.withLock { progress in
            for topicPartition in released { progress[topicPartition] = nil }
        }
        logger.debug("partitions released", metadata: ["kafka.partitions": "\(describe(released))"])
    }

    // MARK: Commits

    /// Starts one commit for every waiting caller, unless a callers' commit is out (its completion starts the next).
    private func startCallersCommitIfIdle() {
        guard let waiting = commits.takeWaitingCallers() else { return }
        startCommit(.callers(waiting), timeout: .seconds(30))
    }

    @discardableResult
    private func startCommit(_ purpose: CommitLedger<CheckedContinuation<Void, any Error>>.Purpose, timeout: Duration) -> UInt64 {
        let identifier = commits.started(purpose, now: .now, timeout: timeout)
        // An explicit list of what was stored for assigned partitions, with its metadata (librdkafka before
        // 2.2 drops the metadata of stored offsets); none stored: librdkafka's own (nothing to commit).
        let progress = shared.storedProgress.withLock { progress in
            progress.values.filter { partitions[$0.topicPartition] != nil }.sorted { $0.topicPartition < $1.topicPartition }
        }
        let offsets = progress.isEmpty ? nil : TopicPartitionList.make(progress)
        defer { if let offsets { rd_kafka_topic_partition_list_destroy(offsets) } }
        let result = rd_kafka_commit_queue(rk, offsets, consumerQueue, nil, UnsafeMutableRawPointer(bitPattern: UInt(identifier)))
        if case .callers = purpose { shared.callerCommitsSent.add(1, ordering: .relaxed) }
        if result != RD_KAFKA_RESP_ERR_NO_ERROR {
            completeCommit(identifier, error: result)
        }
        return identifier
    }

    private func handleCommitResult(_ event: OpaquePointer) {
        let identifier = UInt64(UInt(bitPattern: rd_kafka_event_opaque(event)))
        var error = rd_kafka_event_error(event)
        if error == RD_KAFKA_RESP_ERR_NO_ERROR, let list = rd_kafka_event_topic_partition_list(event),
            let (_, partitionError) = TopicPartitionList.firstError(list)
        {
            error = partitionError
        }
        completeCommit(identifier, error: error)
    }

    private func completeCommit(_ identifier: UInt64, error: rd_kafka_resp_err_t) {
        // Nothing stored to commit is success.
        let failure: KafkaError? =
            (error == RD_KAFKA_RESP_ERR_NO_ERROR || error == RD_KAFKA_RESP_ERR__NO_OFFSET)
            ? nil : KafkaError.rdkafka(error, context: "committing offsets")
        guard let completion = commits.completed(identifier, failed: failure != nil, now: .now) else { return }
        if let failure {
            shared.commitFailures.add(1, ordering: .relaxed)
            if failure.isRebalanceSignal { rebalanceGate.rebalanceSeen(now: .now) }
        }
        switch completion {
        case .callers(let continuations):
            for continuation in continuations {
                if let failure { continuation.resume(throwing: failure) } else { continuation.resume() }
            }
            startCallersCommitIfIdle()
        case .periodic(let retryIn):
            if let failure, let backoff = retryIn {
                // What was stored is still to be committed.
                shared.offsetsStored.store(true, ordering: .relaxed)
                if failure.isRebalanceSignal {
                    logger.debug("periodic commit refused while the group rebalances; held until it ends", metadata: ["kafka.error": "\(failure.message)"])
                } else {
                    logger.warning(
                        "periodic commit failed; retrying",
                        metadata: ["kafka.error": "\(failure.message)", "sluice.retryIn": "\(backoff)", "sluice.failures": "\(commits.periodicFailures)"])
                }
            }
        case .revocation(let revocationID):
            if let failure {
                logger.warning("commit before releasing revoked partitions failed", metadata: ["kafka.error": "\(failure.message)"])
            }
            if let revocation = revocations.removeValue(forKey: revocationID) {
                release(revocation.partitions)
            }
        case .close:
            if let failure {
                logger.warning("final commit failed", metadata: ["kafka.error": "\(failure.message)"])
            }
            if close.finalCommitCompleted() { beginClose() }
        }
    }

    // MARK: Partitions

    /// Moves messages from partition queues into their buffers. Returns whether a queue may have more.
    private func servePartitions() -> Bool {
        var more = false
        // Fetching is what librdkafka has, not a copy of it: the reconciler's record (applied before any fetch).
        for state in partitions.values where !state.revoking && !pauses.pausedInLibrdkafka.contains(state.topicPartition) {
            let room = state.channel.room
            if room == 0 {
                pauseForFlowControl(state)
                continue
            }
            let limit = min(room, maxBatch)
            let count = rd_kafka_consume_batch_queue(state.queue, 0, batchBuffer, limit)
            guard count > 0 else { continue }
            // One buffer for the batch's keys and values.
            var writer = KafkaBytes.BatchWriter(for: (0..<count).lazy.map { self.batchBuffer[$0]!.pointee })
            var batch: [ConsumedMessage] = []
            batch.reserveCapacity(count)
            for index in 0..<count {
                let message = batchBuffer[index]!
                if message.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    reportMessageError(message, state.topicPartition)
                } else {
                    batch.append(convert(UnsafePointer(message), topic: state.topicPartition.topic, into: &writer))
                }
                rd_kafka_message_destroy(message)
            }
            if count == limit { more = true }
            state.delivered = true
            state.deliveredMessages += batch.count
            state.lastDeliveredOffset = batch.last?.offset ?? state.lastDeliveredOffset
            if !batch.isEmpty, state.channel.push(batch) {
                pauseForFlowControl(state)
            }
        }
        return more
    }

    // MARK: Partitions librdkafka left unstarted

    /// librdkafka starts an assigned partition's fetcher only once the coordinator answered its committed
    /// offset; when that fetch fails (an error it does not retry, or one it may not retry because the
    /// assignment changed meanwhile), the partition stays assigned and never fetches until the application
    /// unassigns and re-assigns it (rdkafka_assignment.c, 2.0.2 to 2.16). The error names the partition, or
    /// only how many: then every partition that has not delivered a message in this assignment is restarted
    /// (restarting one that did start but had nothing to deliver yet loses nothing).
    private func scheduleRestart(after event: OpaquePointer) {
        var affected: [PartitionState]
        if let named = rd_kafka_event_topic_partition(event) {
            defer { rd_kafka_topic_partition_destroy(named) }
            let topicPartition = TopicPartition(String(cString: named.pointee.topic), named.pointee.partition)
            affected = partitions[topicPartition].map { [$0] } ?? []
        } else {
            affected = Array(partitions.values)
        }
        // Paused ones are left alone: nothing is lost while they are paused (a flag off during an incident
        // pauses many), and once resumed, their owner's check (messages waiting, nothing fetched) restarts them.
        affected.removeAll { pauses.pausedInLibrdkafka.contains($0.topicPartition) }
        schedule(restartOf: affected, why: "librdkafka could not fetch its committed offset and will not start it")
    }

    private func schedule(restartOf states: [PartitionState], why: String) {
        let now = ContinuousClock.now
        for state in states where !state.revoking && !state.delivered && state.restartAt == nil {
            let backoff = min(.milliseconds(500) * (1 << min(state.restarts, 6)), Duration.seconds(30))
            state.restartAt = now + backoff
            logger.warning(
                "restarting the partition's fetcher: \(why)",
                metadata: metadata(state.topicPartition, ["sluice.restartIn": "\(backoff)", "sluice.restarts": "\(state.restarts)"]))
        }
    }

    /// Restarts the fetchers that are due, while the group is steady (an assignment call made while a
    /// rebalance callback waits would be taken as its answer).
    private func restartDueFetchers(now: ContinuousClock.Instant) {
        guard close.isRunning, !rebalanceGate.isHolding(now: now) else { return }
        for state in partitions.values {
            guard let restartAt = state.restartAt, now >= restartAt else { continue }
            state.restartAt = nil
            guard !state.revoking, !state.delivered else { continue }
            state.restarts += 1
            let list = TopicPartitionList.make([state.topicPartition])
            defer { rd_kafka_topic_partition_list_destroy(list) }
            if let error = rd_kafka_incremental_unassign(rk, list) ?? rd_kafka_incremental_assign(rk, list) {
                let failure = KafkaError.consuming(error, context: "restarting \(state.topicPartition)")
                logger.error("restarting a partition's fetcher failed", metadata: metadata(state.topicPartition, ["kafka.error": "\(failure.message)"]))
                continue
            }
            // Its pause state, applied again as after any assignment. A partition that should fetch is resumed
            // whatever the record says librdkafka has (seen on 2.16: a handed-back partition that fetched
            // nothing after a restart): it delivered nothing, so a resume that rewinds it loses nothing.
            state.newlyAssigned = true
            if state.reasons.isEmpty { pauses.applied(.pause, to: state.topicPartition) }
            reconcilePause(state)
            logger.info("partition fetcher restarted", metadata: metadata(state.topicPartition, ["sluice.restarts": "\(state.restarts)"]))
        }
    }

    /// Logs what the consumer knows of a partition its owner sees stalled (running, unpaused, messages waiting,
    /// no progress): whether it fetched in this assignment, what its queue and buffer hold, its pause state
    /// here and in librdkafka, its fetcher restarts. The owner's report says the shard makes no progress;
    /// this one says on which side of the buffer the messages stopped.
    private func reportStall(_ topicPartition: TopicPartition) {
        guard let state = partitions[topicPartition] else {
            logger.warning("stalled partition: not assigned to this consumer", metadata: metadata(topicPartition))
            return
        }
        let buffer = state.channel.snapshot
        let list = TopicPartitionList.make([topicPartition])
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let position = rd_kafka_position(rk, list) == RD_KAFKA_RESP_ERR_NO_ERROR ? list.pointee.elems[0].offset : -1
        logger.warning(
            "stalled partition, as the consumer sees it",
            metadata: metadata(topicPartition, [
                "sluice.deliveredMessages": "\(state.deliveredMessages)",
                "sluice.lastDeliveredOffset": "\(state.lastDeliveredOffset.map(String.init) ?? "none")",
                "sluice.librdkafkaQueue": "\(rd_kafka_queue_length(state.queue))",
                "sluice.librdkafkaPosition": "\(position)",
                "sluice.bufferedMessages": "\(buffer.messages)",
                "sluice.bufferedBytes": "\(buffer.bytes)",
                "sluice.readerWaiting": "\(buffer.readerWaiting)",
                "sluice.bufferFinished": "\(buffer.finished)",
                "sluice.flowControl": "\(state.flowControl)/\(buffer.flowPaused)",
                "sluice.pauseReasons": "\(state.reasons.map { "\($0)" }.sorted())",
                "sluice.pausedInLibrdkafka": "\(pauses.pausedInLibrdkafka.contains(topicPartition))",
                "sluice.revoking": "\(state.revoking)",
                "sluice.fetcherRestarts": "\(state.restarts)",
                "sluice.restartScheduled": "\(state.restartAt != nil)",
            ]))
    }

    private func pauseForFlowControl(_ state: PartitionState) {
        guard state.channel.markFlowPaused() else { return }
        state.flowControl = true
        reconcilePause(state)
    }

    private func setFlowControl(_ on: Bool, _ topicPartition: TopicPartition) {
        guard let state = partitions[topicPartition], state.flowControl != on else { return }
        state.flowControl = on
        reconcilePause(state)
    }

    private func convert(
        _ message: UnsafePointer<rd_kafka_message_t>, topic: String, into writer: inout KafkaBytes.BatchWriter
    ) -> ConsumedMessage {
        let raw = message.pointee
        let value = raw.payload.map { writer.copy($0, count: raw.len) } ?? KafkaBytes()
        let key = raw.key.map { writer.copy($0, count: raw.key_len) }
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let timestamp = rd_kafka_message_timestamp(message, &timestampType)
        let headers = KafkaHeader.all(of: message)
        return ConsumedMessage(
            topic: topic,
            partition: raw.partition,
            offset: raw.offset,
            key: key,
            value: value,
            headers: headers,
            timestampMilliseconds: timestampType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : timestamp
        )
    }

    private func reportMessageError(_ message: UnsafeMutablePointer<rd_kafka_message_t>, _ topicPartition: TopicPartition) {
        let error = KafkaError.rdkafka(message.pointee.err, context: "consuming \(topicPartition)")
        logger.warning("consume error", metadata: metadata(topicPartition, ["kafka.error": "\(error.message)"]))
        shared.eventsContinuation.yield(.error(error))
    }

    // MARK: Timers and close

    private func serveTimers(now: ContinuousClock.Instant) {
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

    private func perform(_ action: CloseStateMachine.Action) {
        switch action {
        case .releaseRevocations:
            for (identifier, revocation) in revocations where revocation.commitID == nil {
                revocations[identifier]!.commitID = startCommit(.revocation(identifier), timeout: .seconds(5))
            }
        case .startFinalCommit(let timeout):
            startCommit(.close, timeout: timeout)
        case .detach(let firstAssignmentSeen):
            detach(firstAssignmentSeen: firstAssignmentSeen)
        case .destroy(let why):
            switch why {
            case .left: break
            case .neverJoined:
                // The group never answered our JoinGroup: no assignor state exists, so destroying is safe;
                // skip the leave handshake, there is nothing to leave.
                logger.warning("consumer never joined its group; closing without the leave handshake")
            case .leaveTimedOut:
                logger.warning("consumer did not finish leaving its group in time; closing without the handshake")
            case .leaveRefused:
                break
            }
            destroy(flags: why.handshake ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE)
        }
    }

    /// The final commit is done: leave the group.
    private func beginClose() {
        let error = rd_kafka_consumer_close_queue(rk, consumerQueue)
        if let error {
            let failure = KafkaError.consuming(error, context: "closing the consumer")
            logger.error("consumer close failed", metadata: ["kafka.error": "\(failure.message)"])
        }
        if let action = close.leaveStarted(now: .now, refused: error != nil) { perform(action) }
    }

    /// `closeTimeout` passed since close was asked for and the consumer is still joining (JoinGroup answered,
    /// SyncGroup not yet: closing or destroying now aborts the process with librdkafka < 2.3.0) or still
    /// committing and leaving. Release the callers, end every sequence, and let the owner finish alone: it
    /// closes once the first assignment arrives, and destroys without the handshake `closeTimeout` after
    /// the handshake began.
    private func detach(firstAssignmentSeen: Bool) {
        if firstAssignmentSeen {
            logger.warning("consumer close is taking longer than closeTimeout; it finishes leaving its group in the background")
        } else {
            logger.warning("consumer is in its first rebalance; it will leave the group once that completes")
        }
        for state in partitions.values { state.channel.finish() }
        shared.eventsContinuation.finish()
        releaseCloseWaiters()
    }

    private func destroy(flags: Int32) {
        for state in partitions.values {
            state.channel.finish()
            rd_kafka_queue_io_event_enable(state.queue, -1, nil, 0)
            rd_kafka_queue_destroy(state.queue)
        }
        partitions.removeAll()
        shared.channels.withLock { $0.removeAll() }
        shared.pauseSnapshot.withLock { $0.removeAll() }
        for continuation in commits.abandonAll() { continuation.resume(throwing: KafkaError.closedError) }
        rd_kafka_queue_io_event_enable(consumerQueue, -1, nil, 0)
        rd_kafka_queue_destroy(consumerQueue)
        shared.retireHandle()
        close.destroyed()
        logger.info("consumer closed")
        // Nothing can reach the handle any more. librdkafka's teardown can take seconds when brokers are
        // unreachable; the callers of close() need not wait for it, the owner thread does.
        shared.eventsContinuation.finish()
        releaseCloseWaiters()
        let destroyStarted = ContinuousClock.now
        shared.handle.destroy(flags: flags)
        logger.debug("librdkafka handle destroyed", metadata: ["sluice.destroyTook": "\(ContinuousClock.now - destroyStarted)"])
        // Commands that arrived meanwhile.
        for command in shared.takeInbox(last: true).commands { failAfterClose(command) }
    }

    /// Whether a periodic commit may start when it is due: while running, not during a rebalance, and not
    /// while the last one is still out.
    private func mayCommitPeriodically(now: ContinuousClock.Instant) -> Bool {
        guard close.isRunning else { return false }
        return !rebalanceGate.isHolding(now: now) && !commits.periodicOut
    }

    private func waitBudget(now: ContinuousClock.Instant) -> Int32 {
        // The periodic commit is only due while running (it is not rescheduled afterwards, and a deadline in
        // the past would make this loop spin while a close waits for the first join).
        var next = now + .milliseconds(200)
        if let commitDeadline = commits.nextDeadline(periodicAllowed: mayCommitPeriodically(now: now)) { next = min(next, commitDeadline) }
        for revocation in revocations.values where revocation.commitID == nil { next = min(next, revocation.deadline) }
        for state in partitions.values { if let restartAt = state.restartAt { next = min(next, restartAt) } }
        if let closeDeadline = close.nextDeadline(now: now) { next = min(next, closeDeadline) }
        let milliseconds = (next - now).milliseconds
        return Int32(clamping: max(0, min(milliseconds, 200)))
    }

    // MARK: Logging

    private func metadata(_ topicPartition: TopicPartition, _ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        var result = extra
        result["kafka.topic"] = "\(topicPartition.topic)"
        result["kafka.partition"] = "\(topicPartition.partition)"
        return result
    }

    private func describe(_ list: [TopicPartition]) -> String {
        list.sorted().map(\.description).joined(separator: ",")
    }
}

extension KafkaBytes.BatchWriter {
    /// A writer with one buffer for the keys and values of `messages` (nothing for an error message).
    init(for messages: some Sequence<rd_kafka_message_t>) {
        self.init()
        for raw in messages where raw.err == RD_KAFKA_RESP_ERR_NO_ERROR {
            if raw.payload != nil { reserve(raw.len) }
            if raw.key != nil { reserve(raw.key_len) }
        }
        allocate()
    }
}
