import Crdkafka
import Logging

/// Partitions: moving messages from their queues into their buffers, flow control, fetchers librdkafka left
/// unstarted, stall reports.
extension ConsumerLoop {
    // MARK: Partitions

    /// Moves messages from partition queues into their buffers. Returns whether a queue may have more.
    func servePartitions() -> Bool {
        var more = false
        // Fetching is what librdkafka has, not a copy of it: the reconciler's record (applied before any fetch).
        for state in partitions.values
        where !state.revoking && !pauses.pausedInLibrdkafka.contains(state.topicPartition) {
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
    func scheduleRestart(after event: OpaquePointer) {
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

    func schedule(restartOf states: [PartitionState], why: String) {
        let now = ContinuousClock.now
        for state in states where !state.revoking && !state.delivered && state.restartAt == nil {
            let backoff = min(.milliseconds(500) * (1 << min(state.restarts, 6)), Duration.seconds(30))
            state.restartAt = now + backoff
            logger.warning(
                "restarting the partition's fetcher: \(why)",
                metadata: metadata(
                    state.topicPartition, ["sluice.restartIn": "\(backoff)", "sluice.restarts": "\(state.restarts)"]))
        }
    }

    /// Restarts the fetchers that are due, while the group is steady (an assignment call made while a
    /// rebalance callback waits would be taken as its answer).
    func restartDueFetchers(now: ContinuousClock.Instant) {
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
                logger.error(
                    "restarting a partition's fetcher failed",
                    metadata: metadata(state.topicPartition, ["kafka.error": "\(failure.message)"]))
                continue
            }
            // Its pause state, applied again as after any assignment. A partition that should fetch is resumed
            // whatever the record says librdkafka has (seen on 2.16: a handed-back partition that fetched
            // nothing after a restart): it delivered nothing, so a resume that rewinds it loses nothing.
            state.newlyAssigned = true
            if state.reasons.isEmpty { pauses.applied(.pause, to: state.topicPartition) }
            reconcilePause(state)
            logger.info(
                "partition fetcher restarted",
                metadata: metadata(state.topicPartition, ["sluice.restarts": "\(state.restarts)"]))
        }
    }

    /// Logs what the consumer knows of a partition its owner sees stalled (running, unpaused, messages waiting,
    /// no progress): whether it fetched in this assignment, what its queue and buffer hold, its pause state
    /// here and in librdkafka, its fetcher restarts. The owner's report says the shard makes no progress;
    /// this one says on which side of the buffer the messages stopped.
    func reportStall(_ topicPartition: TopicPartition) {
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
            metadata: metadata(
                topicPartition,
                [
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

    func pauseForFlowControl(_ state: PartitionState) {
        guard state.channel.markFlowPaused() else { return }
        state.flowControl = true
        reconcilePause(state)
    }

    func setFlowControl(_ on: Bool, _ topicPartition: TopicPartition) {
        guard let state = partitions[topicPartition], state.flowControl != on else { return }
        state.flowControl = on
        reconcilePause(state)
    }

    func convert(
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

    func reportMessageError(_ message: UnsafeMutablePointer<rd_kafka_message_t>, _ topicPartition: TopicPartition) {
        let error = KafkaError.rdkafka(message.pointee.err, context: "consuming \(topicPartition)")
        logger.warning("consume error", metadata: metadata(topicPartition, ["kafka.error": "\(error.message)"]))
        shared.eventsContinuation.yield(.error(error))
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
