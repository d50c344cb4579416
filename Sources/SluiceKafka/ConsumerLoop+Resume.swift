import Crdkafka
import Logging

/// Resuming where a process that died got to (``KafkaConsumer/resume(from:)``): the partitions of the first
/// assignment start at the offset the dead process stored when it is past the group's commit, and that offset
/// is stored at once, so the next commit carries it and nothing the dead process finished is fetched again.
extension ConsumerLoop {
    /// The positions to start `added` at: for the partitions the first assignment shares with the pending
    /// positions, each one past the group's committed offset, at most the partition's high watermark (an offset
    /// from a file: one beyond the log would make the fetcher reset the partition per `auto.offset.reset`).
    /// Two round trips (committed offsets, high watermarks), once per start after an unclean death; a failed
    /// one resumes nothing (the partitions start from the group's commit, and their work is handled again).
    func resumePositions(for added: [TopicPartition]) -> [TopicPartitionOffset] {
        guard !added.isEmpty,
            let byCluster = shared.pendingResume.withLock({ pending in
                defer { pending = nil }
                return pending
            }), !byCluster.isEmpty
        else { return [] }
        // Only a dead process's progress on this same cluster (a state directory reused against another one
        // names offsets that mean nothing here). Known by the first assignment: the client has its metadata.
        guard let cluster = shared.handle.clusterID(timeout: .seconds(1)) else {
            logger.warning(
                "the cluster did not say its id: the partitions the last process had resume from the group's commit")
            return []
        }
        let pending = byCluster[cluster] ?? [:]
        if pending.isEmpty {
            logger.warning(
                "the last process's progress is of another Kafka cluster: not used",
                metadata: ["kafka.clusterID": "\(cluster)", "sluice.progressClusters": "\(byCluster.keys.sorted())"])
            return []
        }
        let wanted = added.compactMap { pending[$0] }
        if wanted.count < pending.count {
            let assigned = Set(added)
            logger.info(
                "partitions the last process had are not in this first assignment: they resume from the group's commit",
                metadata: [
                    "kafka.partitions": "\(describe(pending.keys.filter { !assigned.contains($0) }.sorted()))"
                ])
        }
        guard !wanted.isEmpty else { return [] }
        let partitions = wanted.map(\.topicPartition)
        let committed: [TopicPartition: Int64]
        let highs: [TopicPartition: Int64]
        do {
            committed = try shared.handle.committed(partitions, timeout: .seconds(5)).mapValues(\.offset)
            highs = try shared.handle.queryWatermarks(partitions, end: true, timeout: .seconds(5))
        } catch {
            logger.warning(
                "could not ask where the group is for the partitions the last process had; they resume from the group's commit",
                metadata: ["kafka.error": "\(error)"])
            return []
        }
        var positions: [TopicPartitionOffset] = []
        for position in wanted {
            let topicPartition = position.topicPartition
            guard let high = highs[topicPartition] else { continue }
            let start = min(position.offset, high)
            guard start > committed[topicPartition] ?? -1 else { continue }
            if start < position.offset {
                logger.warning(
                    "the last process's progress is past the partition's high watermark; resuming at the high watermark",
                    metadata: [
                        "kafka.partition": "\(topicPartition)", "kafka.offset": "\(position.offset)",
                        "kafka.highWatermark": "\(high)",
                    ])
            }
            // The metadata names offsets above the position it was stored with: kept only with that position.
            positions.append(
                TopicPartitionOffset(
                    topicPartition, offset: start, metadata: start == position.offset ? position.metadata : nil))
        }
        return positions
    }

    /// Stores the resumed positions (with their metadata) as completed work, right after the assignment.
    func storeResumed(_ positions: [TopicPartitionOffset]) {
        guard !positions.isEmpty else { return }
        let list = TopicPartitionList.make(positions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let error = rd_kafka_offsets_store(rk, list)
        if error != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning(
                "could not store the positions resumed from the last process; they are committed with the next progress",
                metadata: ["kafka.error": "\(String(cString: rd_kafka_err2str(error)))"])
        }
        shared.storedProgress.withLock { progress in
            for position in positions { progress[position.topicPartition] = position }
        }
        shared.resumed.withLock { resumed in
            for position in positions { resumed[position.topicPartition] = position }
        }
        shared.offsetsStored.store(true, ordering: .relaxed)
        logger.info(
            "partitions resume where the last process got to, past the group's commit",
            metadata: ["kafka.partitions": "\(positions.map(\.description).joined(separator: ","))"])
    }
}

extension TopicPartition {
    /// The partition with no offset: an assignment starts it from the group's commit.
    var unset: TopicPartitionOffset { TopicPartitionOffset(self, offset: Int64(RD_KAFKA_OFFSET_INVALID)) }
}
