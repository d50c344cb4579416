import Crdkafka
import Logging

/// The close's actions (``CloseStateMachine``): the final commit, leaving the group, releasing the callers,
/// destroying the handle.
extension ConsumerLoop {
    func perform(_ action: CloseStateMachine.Action) {
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
    func beginClose() {
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
    func detach(firstAssignmentSeen: Bool) {
        if firstAssignmentSeen {
            logger.warning(
                "consumer close is taking longer than closeTimeout; it finishes leaving its group in the background")
        } else {
            logger.warning("consumer is in its first rebalance; it will leave the group once that completes")
        }
        for state in partitions.values { state.channel.finish() }
        shared.eventsContinuation.finish()
        releaseCloseWaiters()
    }

    func destroy(flags: Int32) {
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
        logger.debug(
            "librdkafka handle destroyed", metadata: ["sluice.destroyTook": "\(ContinuousClock.now - destroyStarted)"])
        // Commands that arrived meanwhile.
        for command in shared.takeInbox(last: true).commands { failAfterClose(command) }
    }
}
