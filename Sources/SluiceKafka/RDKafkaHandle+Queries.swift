import Crdkafka

extension RDKafkaHandle {
    /// Blocking: asks the partition leader for its watermarks.
    func queryWatermarks(_ topicPartition: TopicPartition, timeout: Duration) throws(KafkaError) -> Watermarks {
        var low: Int64 = -1
        var high: Int64 = -1
        let error = rd_kafka_query_watermark_offsets(
            pointer, topicPartition.topic, topicPartition.partition, &low, &high,
            Int32(clamping: timeout.milliseconds))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw .rdkafka(error, context: "querying the watermarks of \(topicPartition)")
        }
        return Watermarks(low: low, high: high)
    }

    /// The cluster's id from the client's metadata, waiting up to `timeout` for it (zero: no request); nil when not
    /// known by then.
    func clusterID(timeout: Duration) -> String? {
        guard let id = rd_kafka_clusterid(pointer, Int32(clamping: timeout.milliseconds)) else { return nil }
        defer { rd_kafka_mem_free(pointer, id) }
        return String(cString: id)
    }

    /// Blocking: the group's committed offsets of `partitions` with their commit metadata (one round trip to the
    /// coordinator). Partitions without a committed offset are left out.
    func committed(_ partitions: [TopicPartition], timeout: Duration) throws(KafkaError) -> [TopicPartition:
        TopicPartitionOffset]
    {
        let list = TopicPartitionList.make(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let error = rd_kafka_committed(pointer, list, Int32(clamping: timeout.milliseconds))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw .rdkafka(error, context: "reading committed offsets") }
        var result: [TopicPartition: TopicPartitionOffset] = [:]
        for item in TopicPartitionList.read(list) where item.offset >= 0 { result[item.topicPartition] = item }
        return result
    }

    /// Blocking: the high (`end`) or low watermarks of many partitions in one ListOffsets round trip per
    /// leader (`rd_kafka_offsets_for_times` with a logical timestamp). Partitions that failed are left out.
    func queryWatermarks(_ partitions: [TopicPartition], end: Bool, timeout: Duration) throws(KafkaError)
        -> [TopicPartition: Int64]
    {
        guard !partitions.isEmpty else { return [:] }
        let logical = Int64(end ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING)
        let list = TopicPartitionList.make(partitions.map { TopicPartitionOffset($0, offset: logical) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let error = rd_kafka_offsets_for_times(pointer, list, Int32(clamping: timeout.milliseconds))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw .rdkafka(error, context: "querying the watermarks of \(partitions.count) partitions")
        }
        var result: [TopicPartition: Int64] = [:]
        for index in 0..<Int(list.pointee.cnt) {
            let element = list.pointee.elems[index]
            guard element.err == RD_KAFKA_RESP_ERR_NO_ERROR, element.offset >= 0 else { continue }
            result[TopicPartition(String(cString: element.topic), element.partition)] = element.offset
        }
        return result
    }

    /// Blocking: whether the cluster has `topic`, from the metadata of every topic. Asking for all topics
    /// creates none (asking for one by name may: older protocol versions, which the embedded cluster speaks,
    /// let the broker auto-create it).
    func topicExists(_ topic: String, timeout: Duration) throws(KafkaError) -> Bool {
        try topics(timeout: timeout)[topic] != nil
    }

    /// Blocking: every topic of the cluster and its partition count, from the metadata of every topic (which
    /// creates none).
    func topics(timeout: Duration) throws(KafkaError) -> [String: Int] {
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(pointer, 1, nil, &metadata, Int32(clamping: timeout.milliseconds))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
            throw .rdkafka(error, context: "reading the cluster's topics")
        }
        defer { rd_kafka_metadata_destroy(metadata) }
        var topics: [String: Int] = [:]
        for index in 0..<Int(metadata.pointee.topic_cnt) {
            let entry = metadata.pointee.topics[index]
            if entry.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                topics[String(cString: entry.topic)] = Int(entry.partition_cnt)
            }
        }
        return topics
    }

    /// Blocking: the partition count of `topic` from the cluster's metadata.
    func partitionCount(topic: String, timeout: Duration) throws(KafkaError) -> Int {
        guard let topicHandle = rd_kafka_topic_new(pointer, topic, nil) else {
            throw .rdkafka(rd_kafka_last_error(), context: "opening topic '\(topic)'")
        }
        defer { rd_kafka_topic_destroy(topicHandle) }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(pointer, 0, topicHandle, &metadata, Int32(clamping: timeout.milliseconds))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
            throw .rdkafka(error, context: "reading the metadata of topic '\(topic)'")
        }
        defer { rd_kafka_metadata_destroy(metadata) }
        for index in 0..<Int(metadata.pointee.topic_cnt) {
            let entry = metadata.pointee.topics[index]
            guard String(cString: entry.topic) == topic else { continue }
            if entry.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                throw .rdkafka(entry.err, context: "reading the metadata of topic '\(topic)'")
            }
            return Int(entry.partition_cnt)
        }
        throw KafkaError(code: .unknownPartition, message: "topic '\(topic)' is not in the cluster's metadata")
    }
}
