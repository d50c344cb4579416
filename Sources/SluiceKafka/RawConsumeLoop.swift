import Crdkafka

/// The baseline for benchmarks: a plain librdkafka consume loop (`rd_kafka_consumer_poll`, one message
/// per call, payload length read) with the same consumer settings as ``KafkaConsumer``, no pipeline.
/// Blocking: run it on a thread of its own, never on Swift's cooperative pool.
public enum RawConsumeLoop {
    /// What one run measured.
    public struct Result: Sendable {
        /// Messages read.
        public var messages: Int
        /// From the first message to the last.
        public var elapsed: Duration
        /// Payload bytes read.
        public var bytes: Int
    }

    /// Joins `configuration.groupID`, subscribes to `topic` and reads until `count` messages arrived or
    /// `timeout` passed.
    public static func run(configuration: KafkaConsumerConfiguration, topic: String, count: Int, timeout: Duration) throws -> Result {
        let handle = try RDKafkaHandle(
            type: RD_KAFKA_CONSUMER, properties: try configuration.librdkafkaProperties(), events: 0, logger: "raw consumer")
        let rk = handle.pointer
        rd_kafka_poll_set_consumer(rk)
        let list = TopicPartitionList.make([TopicPartition(topic, RD_KAFKA_PARTITION_UA)])
        defer { rd_kafka_topic_partition_list_destroy(list) }
        // enable.auto.offset.store=false and no commits: the loop only reads.
        let error = rd_kafka_subscribe(rk, list)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError.rdkafka(error, context: "subscribing to \(topic)") }
        var messages = 0
        var bytes = 0
        var first: ContinuousClock.Instant?
        var last = ContinuousClock.now
        let deadline = ContinuousClock.now + timeout
        while messages < count, ContinuousClock.now < deadline {
            guard let message = rd_kafka_consumer_poll(rk, 100) else { continue }
            if message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                if first == nil { first = .now }
                messages += 1
                bytes += message.pointee.len
                last = .now
            }
            rd_kafka_message_destroy(message)
        }
        // The first rebalance completed (messages arrived), so closing is safe on librdkafka 2.0.2.
        rd_kafka_consumer_close(rk)
        handle.destroy()
        return Result(messages: messages, elapsed: first.map { last - $0 } ?? .zero, bytes: bytes)
    }
}
