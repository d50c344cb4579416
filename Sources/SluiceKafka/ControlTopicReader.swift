import Crdkafka
import Logging
import Synchronization

/// Reads a one-partition control topic from the beginning, with a consumer of its own that joins no group
/// (assign only, nothing committed, never paused by what it controls), and keeps tailing it.
///
/// ``load(timeout:)`` returns once every record up to the high watermark it found at the start was handed
/// to `onRecord`; records that come later are handed over as they arrive (a short fetch wait: push, no
/// polling interval). Blocking librdkafka calls run on a thread of the reader's own.
public final class ControlTopicReader: Sendable {
    /// One record of the control topic.
    public struct Record: Sendable, Hashable {
        public let offset: Int64
        public let key: String
        /// Nil for a tombstone.
        public let value: [UInt8]?
        /// The record's headers (a signature, when the group's records are signed).
        public let headers: [KafkaHeader]
    }

    private struct State {
        var loaded = false
        var loadError: KafkaError?
        var loadWaiters: [CheckedContinuation<Void, Never>] = []
        var stopping = false
        var position: Int64 = 0
    }

    public let topic: String
    private let handle: RDKafkaHandle
    private let state = Mutex(State())
    private let onRecord: @Sendable (Record) -> Void
    private let onRecreated: @Sendable (_ position: Int64, _ offset: Int64) -> Void
    private let logger: Logger
    private let stopped = Mutex<CheckedContinuation<Void, Never>?>(nil)
    private let finished = Mutex(false)

    /// Creates the reader; nothing is read before ``load(timeout:)``.
    ///
    /// `onRecreated` is called when the topic turns out to be another one than the reader read so far (a
    /// record came at an offset below its position: the topic was deleted and created again). The reader
    /// reads the new topic from its beginning: the owner drops what it built from the old one first.
    public init(
        bootstrapServers: String, topic: String, properties: [String: String] = [:], logger: Logger,
        onRecreated: @escaping @Sendable (_ position: Int64, _ offset: Int64) -> Void = { _, _ in },
        onRecord: @escaping @Sendable (Record) -> Void
    ) throws(KafkaError) {
        self.topic = topic
        self.onRecord = onRecord
        self.onRecreated = onRecreated
        self.logger = logger
        var settings: [(String, String)] = [
            ("bootstrap.servers", bootstrapServers),
            ("client.id", "sluice-control"),
            // librdkafka's consumer API needs a group id even for assign-only reading; this one never joins.
            ("group.id", "sluice-control-reader-\(UInt64.random(in: 0...UInt64.max))"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("fetch.wait.max.ms", "10"),
            // A position past the end (the topic was recreated) starts over from the new topic's beginning.
            ("auto.offset.reset", "earliest"),
            // Reading never creates the topic: hosts create it at start, compacted with one partition
            // (control.createTopics); one made by a broker's auto-creation would have neither.
            ("allow.auto.create.topics", "false"),
        ]
        settings += properties.sorted { $0.key < $1.key }.filter { key, _ in !key.hasPrefix("group.") }
        handle = try RDKafkaHandle(
            type: RD_KAFKA_CONSUMER, properties: settings, events: 0, logger: "control topic reader")
        rd_kafka_poll_set_consumer(handle.pointer)
    }

    /// Starts reading and waits until the records up to the current high watermark were handed over.
    /// Throws when the topic cannot be read within `timeout` (the reader then stops).
    public func load(timeout: Duration) async throws(KafkaError) {
        let deadline = ContinuousClock.now + timeout
        OwnerThread.start(name: "sluice-control") { [self] in self.run(deadline: deadline) }
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                if state.loaded || state.loadError != nil { return true }
                state.loadWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
        if let error = state.withLock({ $0.loadError }) { throw error }
    }

    /// The offset of the next record to read.
    public var position: Int64 { state.withLock { $0.position } }

    /// The topic's end now (its high watermark), asked of the broker: every record written before this call
    /// is below it. Throws when the broker does not answer within `timeout`.
    public func endOffset(timeout: Duration) async throws(KafkaError) -> Int64 {
        guard !finished.withLock({ $0 }) else { throw KafkaError.closedError }
        let handle = self.handle
        let topic = self.topic
        do {
            return try await OwnerThread.blocking { () throws(KafkaError) -> Int64 in
                var low: Int64 = 0
                var high: Int64 = 0
                let error = rd_kafka_query_watermark_offsets(
                    handle.pointer, topic, 0, &low, &high, Int32(clamping: timeout.milliseconds))
                guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
                    throw .rdkafka(error, context: "reading the end of control topic '\(topic)'")
                }
                return high
            }
        } catch let error as KafkaError {
            throw error
        } catch {
            throw KafkaError(code: .librdkafka, message: "\(error)")
        }
    }

    /// Stops tailing and destroys the consumer; returns once it is gone.
    public func close() async {
        let alreadyFinished = finished.withLock { $0 }
        if alreadyFinished { return }
        await withCheckedContinuation { continuation in
            let done = finished.withLock { finished -> Bool in
                if finished { return true }
                stopped.withLock { $0 = continuation }
                return false
            }
            state.withLock { $0.stopping = true }
            if done { continuation.resume() }
        }
    }

    private func drainLogs(_ queue: OpaquePointer) {
        while let event = rd_kafka_queue_poll(queue, 0) {
            if rd_kafka_event_type(event) == RD_KAFKA_EVENT_LOG { LibrdkafkaLog.forward(event, to: logger) }
            rd_kafka_event_destroy(event)
        }
    }

    /// When a record's `offset` is below the position read to, the topic was deleted and created again: the
    /// owner is told, and the position starts over.
    private func recreatedIfBelow(_ offset: Int64) {
        let position = state.withLock { state -> Int64? in
            guard offset < state.position else { return nil }
            defer { state.position = offset }
            return state.position
        }
        guard let position else { return }
        logger.warning(
            "control topic recreated: a record came below what was read; the topic is read from its beginning",
            metadata: ["kafka.topic": "\(topic)", "sluice.position": "\(position)", "kafka.offset": "\(offset)"])
        onRecreated(position, offset)
    }

    private func finishLoad(_ error: KafkaError?) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            if error != nil { state.loadError = error } else { state.loaded = true }
            defer { state.loadWaiters.removeAll() }
            return state.loadWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    private func run(deadline: ContinuousClock.Instant) {
        let rk = handle.pointer
        // librdkafka's log lines go to swift-log, not to stderr in librdkafka's own format.
        let logQueue = rd_kafka_queue_new(rk)!
        rd_kafka_set_log_queue(rk, logQueue)
        defer {
            drainLogs(logQueue)
            rd_kafka_set_log_queue(rk, nil)
            rd_kafka_queue_destroy(logQueue)
            rd_kafka_consumer_close(rk)
            handle.destroy()
            let waiter = finished.withLock { finished -> CheckedContinuation<Void, Never>? in
                finished = true
                return stopped.withLock { $0.take() }
            }
            waiter?.resume()
        }
        // A missing topic is named at once (it is never created here), not waited for until the deadline.
        let remaining = {
            Duration.milliseconds(max(1, min(2_000, (deadline - ContinuousClock.now) / .milliseconds(1))))
        }
        if let exists = try? handle.topicExists(topic, timeout: remaining()), !exists {
            finishLoad(
                .configuration(
                    "control topic '\(topic)' does not exist: no host of the group has started with the control plane (hosts create it, control.createTopics), or it was deleted; create it with 1 partition and cleanup.policy=compact"
                ))
            return
        }
        // The topic's leader, known at once: otherwise librdkafka looks it up on its once-a-second topic scan,
        // a second added to every CLI command.
        let partitions = try? handle.partitionCount(topic: topic, timeout: remaining())
        // Records on any other partition than 0 would never be read: a flag written there would silently not apply.
        // (librdkafka's mock cluster, the embedded cluster and `sluice dev-broker`, auto-creates every topic with
        // 4 partitions and cannot be asked for fewer; Sluice writes only partition 0 there.)
        if let partitions, partitions > 1, KafkaTopicAdmin.mockClusterID(handle, timeout: remaining()) == nil {
            finishLoad(
                .configuration(
                    "control topic '\(topic)' has \(partitions) partitions; it must have exactly one (records written to the others would be ignored): recreate it with 1 partition and cleanup.policy=compact"
                ))
            return
        }
        // The end to load to: the high watermark now.
        var low: Int64 = 0
        var high: Int64 = 0
        var error = RD_KAFKA_RESP_ERR__TIMED_OUT
        while ContinuousClock.now < deadline, !state.withLock({ $0.stopping }) {
            error = rd_kafka_query_watermark_offsets(rk, topic, 0, &low, &high, 2_000)
            if error == RD_KAFKA_RESP_ERR_NO_ERROR { break }
        }
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
            finishLoad(KafkaError.rdkafka(error, context: "reading the end of control topic '\(topic)'"))
            return
        }
        let list = TopicPartitionList.make([
            TopicPartitionOffset(TopicPartition(topic, 0), offset: Int64(RD_KAFKA_OFFSET_BEGINNING))
        ])
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let assigned = rd_kafka_assign(rk, list)
        guard assigned == RD_KAFKA_RESP_ERR_NO_ERROR else {
            finishLoad(KafkaError.rdkafka(assigned, context: "assigning control topic '\(topic)'"))
            return
        }
        var loaded = false
        if high <= low {
            loaded = true
            finishLoad(nil)
        }
        while !state.withLock({ $0.stopping }) {
            if !loaded, ContinuousClock.now >= deadline {
                finishLoad(
                    KafkaError(
                        code: .timeout, message: "control topic '\(topic)' not read to its end (\(high)) in time"))
                return
            }
            drainLogs(logQueue)
            guard let message = rd_kafka_consumer_poll(rk, 100) else { continue }
            defer { rd_kafka_message_destroy(message) }
            let raw = message.pointee
            guard raw.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                if raw.err != RD_KAFKA_RESP_ERR__PARTITION_EOF {
                    logger.warning(
                        "control topic read error",
                        metadata: ["kafka.error": "\(String(cString: rd_kafka_err2str(raw.err)))"])
                }
                continue
            }
            // A record below what was read: the topic is another one now. (The broker answered the reader's
            // position as out of range, and the reader started over from the new topic's beginning; hosts
            // write their status every few seconds, so a recreated topic gets a record soon. Watermarks are
            // not compared: a broker may report them short, as tansu does.)
            recreatedIfBelow(raw.offset)
            let key =
                raw.key.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: raw.key_len), as: UTF8.self) }
                ?? ""
            let value = raw.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: raw.len)) }
            onRecord(Record(offset: raw.offset, key: key, value: value, headers: KafkaHeader.all(of: message)))
            state.withLock { $0.position = raw.offset + 1 }
            if !loaded, raw.offset + 1 >= high {
                loaded = true
                finishLoad(nil)
            }
        }
    }
}
