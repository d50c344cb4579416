import Crdkafka

#if canImport(Glibc)
    import Glibc
#endif

/// The baseline for benchmarks: a plain librdkafka consume loop (`rd_kafka_consumer_poll`, one message
/// per call, payload length read) with the same consumer settings as ``KafkaConsumer``, no pipeline.
/// Blocking: run it on a thread of its own, never on Swift's cooperative pool.
public enum RawConsumeLoop {
    /// What one run measured.
    public struct Result: Sendable {
        /// Messages read.
        public var messages: Int
        /// From the first message to the last (to the end of the loop when fewer than `count` came).
        public var elapsed: Duration
        /// Payload bytes read.
        public var bytes: Int
        /// The process's CPU seconds from the first message to the end of the loop (joining the group and
        /// waiting for the first fetch are left out, as they are for the host's figure).
        public var cpuSeconds: Double = 0
        /// With `latencies`: per message, milliseconds from its timestamp (set when it was produced) to when
        /// the loop read it.
        public var latencies: [Double] = []
    }

    /// Joins `configuration.groupID`, subscribes to `topic` and reads until `count` messages arrived or
    /// `timeout` passed. `window` is told when the first message arrives and when the `count`th has been read
    /// (a benchmark counts what happens between the two).
    public static func run(
        configuration: KafkaConsumerConfiguration, topic: String, count: Int, timeout: Duration,
        latencies measureLatency: Bool = false, window: MeasurementWindow = .none
    ) throws -> Result {
        try run(
            configuration: configuration, topics: [topic], count: count, timeout: timeout, latencies: measureLatency,
            window: window)
    }

    /// The same, subscribed to several topics.
    public static func run(
        configuration: KafkaConsumerConfiguration, topics: [String], count: Int, timeout: Duration,
        latencies measureLatency: Bool = false, window: MeasurementWindow = .none
    ) throws -> Result {
        let handle = try RDKafkaHandle(
            type: RD_KAFKA_CONSUMER, properties: try configuration.librdkafkaProperties(), events: 0,
            logger: "raw consumer")
        let rk = handle.pointer
        rd_kafka_poll_set_consumer(rk)
        let list = TopicPartitionList.make(topics.map { TopicPartition($0, RD_KAFKA_PARTITION_UA) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        // enable.auto.offset.store=false and no commits: the loop only reads.
        let error = rd_kafka_subscribe(rk, list)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError.rdkafka(error, context: "subscribing to \(topics)")
        }
        var messages = 0
        var bytes = 0
        var latencies: [Double] = []
        if measureLatency { latencies.reserveCapacity(count) }
        var first: ContinuousClock.Instant?
        var cpuAtFirst = 0.0
        var last: ContinuousClock.Instant?
        let deadline = ContinuousClock.now + timeout
        // The clock is read when a poll comes back empty and every 1,000 messages, not for each message: the
        // loop is the baseline the host's cost per message is measured against.
        var sinceDeadlineCheck = 0
        while messages < count {
            guard let message = rd_kafka_consumer_poll(rk, 100) else {
                if ContinuousClock.now >= deadline { break }
                continue
            }
            if message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                if first == nil {
                    window.opened()
                    first = .now
                    cpuAtFirst = Self.processCPUSeconds()
                }
                messages += 1
                bytes += message.pointee.len
                if messages == count {
                    last = .now
                    window.closed()
                }
                if measureLatency {
                    var type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
                    let stamp = rd_kafka_message_timestamp(message, &type)
                    if type != RD_KAFKA_TIMESTAMP_NOT_AVAILABLE {
                        latencies.append(Self.nowMilliseconds() - Double(stamp))
                    }
                }
            }
            rd_kafka_message_destroy(message)
            sinceDeadlineCheck += 1
            if sinceDeadlineCheck == 1000 {
                sinceDeadlineCheck = 0
                if ContinuousClock.now >= deadline { break }
            }
        }
        // Short of `count` (the deadline passed): up to now.
        let end = last ?? .now
        let cpu = first == nil ? 0 : Self.processCPUSeconds() - cpuAtFirst
        // The first rebalance completed (messages arrived), so closing is safe on librdkafka 2.0.2.
        rd_kafka_consumer_close(rk)
        handle.destroy()
        return Result(
            messages: messages, elapsed: first.map { end - $0 } ?? .zero, bytes: bytes, cpuSeconds: cpu,
            latencies: latencies)
    }

    /// CPU seconds this process has used, all threads.
    public static func processCPUSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1_000_000_000
    }

    /// Wall-clock milliseconds since the epoch, with a fraction (message timestamps are whole milliseconds).
    public static func nowMilliseconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) * 1000 + Double(now.tv_nsec) / 1_000_000
    }
}
