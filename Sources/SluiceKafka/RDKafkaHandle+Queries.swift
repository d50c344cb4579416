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
