import Crdkafka
import Logging

/// The consumer queue (rebalances, commit results, errors, logs) and what an assignment change does to partitions.
extension ConsumerLoop {
    // MARK: Consumer queue

    func serveConsumerQueue() -> Bool {
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
    func handleLog(_ event: OpaquePointer) {
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

    func handleRebalance(_ event: OpaquePointer) {
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

    func assign(_ added: [TopicPartition]) {
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
        let resumed = Dictionary(uniqueKeysWithValues: resumePositions(for: added).map { ($0.topicPartition, $0) })
        let list = TopicPartitionList.make(
            added.map { resumed[$0].map { TopicPartitionOffset($0.topicPartition, offset: $0.offset) } ?? $0.unset })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        if let error = rd_kafka_incremental_assign(rk, list) {
            let failure = KafkaError.consuming(error, context: "incremental assign")
            logger.error("incremental assign failed", metadata: ["kafka.error": "\(failure.message)"])
        } else {
            storeResumed(Array(resumed.values))
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

    func revoke(_ revoked: [TopicPartition]) {
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
    func release(_ released: [TopicPartition]) {
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
        shared.resumed.withLock { resumed in
            for topicPartition in released { resumed[topicPartition] = nil }
        }
        logger.debug("partitions released", metadata: ["kafka.partitions": "\(describe(released))"])
    }
}
