import Crdkafka
import Logging
import Synchronization

/// A record to produce.
public struct ProducerRecord: Sendable, Hashable {
    /// The topic.
    public var topic: String
    /// The partition, or `nil` to let the partitioner choose from the key.
    public var partition: Int32?
    /// The key.
    public var key: [UInt8]?
    /// The payload.
    public var value: [UInt8]
    /// Headers, in order.
    public var headers: [KafkaHeader]
    /// The record's timestamp in milliseconds since the Unix epoch (an event's time, carried on), or `nil` for
    /// the time it is produced. Topics with `message.timestamp.type=LogAppendTime` replace it.
    public var timestampMilliseconds: Int64?

    /// Creates a record.
    public init(
        topic: String, partition: Int32? = nil, key: [UInt8]? = nil, value: [UInt8], headers: [KafkaHeader] = [],
        timestampMilliseconds: Int64? = nil
    ) {
        self.topic = topic
        self.partition = partition
        self.key = key
        self.value = value
        self.headers = headers
        self.timestampMilliseconds = timestampMilliseconds
    }
}

/// Where a produced record landed.
public struct DeliveryReport: Sendable, Hashable {
    /// The partition.
    public var topicPartition: TopicPartition
    /// The record's offset.
    public var offset: Int64
}

/// A Kafka producer whose sends complete with the broker's delivery report.
///
/// `rd_kafka_produceva` never blocks (a full local queue is reported as ``KafkaError/Code/queueFull``),
/// so sends are made from the caller's task. Delivery reports arrive on the main queue, which a
/// dedicated owner thread serves, woken through a pipe by `rd_kafka_queue_io_event_enable`.
public final class KafkaProducer: Sendable {
    typealias Completion = @Sendable (Result<DeliveryReport, KafkaError>) -> Void

    let handle: RDKafkaHandle
    let loop: ProducerLoop
    /// The topics whose metadata this producer asked for (``prepare(topics:timeout:)``).
    private let preparedTopics = Mutex<Set<String>>([])

    /// Creates a producer.
    ///
    /// - Throws: ``KafkaError`` with code ``KafkaError/Code/configuration`` naming a property that
    ///   librdkafka rejected.
    public init(configuration: KafkaProducerConfiguration, logger: Logger) throws(KafkaError) {
        Librdkafka.logVersionOnce(logger)
        handle = try RDKafkaHandle(
            type: RD_KAFKA_PRODUCER,
            properties: configuration.librdkafkaProperties(),
            events: RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_LOG,
            logger: "producer"
        )
        loop = ProducerLoop(handle: handle, flushTimeout: configuration.flushTimeout, logger: logger)
        OwnerThread.start(name: "sluice-producer") { [loop] in loop.run() }
    }

    deinit { loop.requestClose(nil) }

    /// Sends a record and returns once the broker acknowledged it. Waits while librdkafka's local queue
    /// is full.
    public func send(_ record: ProducerRecord) async throws -> DeliveryReport {
        if !preparedTopics.withLock({ $0.contains(record.topic) }) { await prepare(topics: [record.topic]) }
        while true {
            do {
                return try await withCheckedThrowingContinuation { continuation in
                    do {
                        try enqueue(record) { continuation.resume(with: $0) }
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }
            } catch let error as KafkaError where error.code == .queueFull {
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    /// Sends `records` at once (they go out together, one round trip per leader) and returns each one's outcome,
    /// in order, once every one is known. Waits while librdkafka's local queue is full; a record that cannot be
    /// enqueued for another reason reports that error.
    public func sendAll(_ records: [ProducerRecord]) async -> [Result<DeliveryReport, KafkaError>] {
        guard !records.isEmpty else { return [] }
        let unprepared = preparedTopics.withLock { prepared in
            var unprepared: [String] = []
            for record in records where !prepared.contains(record.topic) && !unprepared.contains(record.topic) {
                unprepared.append(record.topic)
            }
            return unprepared
        }
        if !unprepared.isEmpty { await prepare(topics: unprepared) }
        let outcomes = DeliveryOutcomes(count: records.count)
        await enqueueAll(records, outcomes: outcomes)
        await withCheckedContinuation { outcomes.setContinuation($0) }
        return outcomes.results()
    }

    private func enqueueAll(_ records: [ProducerRecord], outcomes: DeliveryOutcomes) async {
        for (index, record) in records.enumerated() {
            while true {
                do {
                    try enqueue(record) { outcomes.complete(index, $0) }
                    break
                } catch let error where error.code == .queueFull {
                    try? await Task.sleep(for: .milliseconds(5))
                } catch {
                    outcomes.complete(index, .failure(error))
                    break
                }
            }
        }
    }

    /// Enqueues a record without waiting; `onDelivery` runs on the producer's thread with the outcome.
    ///
    /// - Throws: ``KafkaError/Code/queueFull`` when librdkafka's queue is full (try again later), or
    ///   ``KafkaError/Code/closed``.
    public func enqueue(
        _ record: ProducerRecord,
        onDelivery: @escaping @Sendable (Result<DeliveryReport, KafkaError>) -> Void
    ) throws(KafkaError) {
        let identifier = try loop.register(onDelivery)
        let error = produce(record, opaque: identifier)
        if error != RD_KAFKA_RESP_ERR_NO_ERROR {
            loop.unregister(identifier)
            throw KafkaError.rdkafka(error, context: "producing to topic '\(record.topic)'")
        }
    }

    private func produce(_ record: ProducerRecord, opaque: UInt) -> rd_kafka_resp_err_t {
        record.topic.withCString { topic in
            record.value.withUnsafeBytes { value in
                withOptionalBytes(record.key) { key in
                    var values: [rd_kafka_vu_t] = []
                    values.reserveCapacity(6 + record.headers.count)
                    var item = rd_kafka_vu_t()
                    item.vtype = RD_KAFKA_VTYPE_TOPIC
                    item.u.cstr = topic
                    values.append(item)
                    item = rd_kafka_vu_t()
                    item.vtype = RD_KAFKA_VTYPE_VALUE
                    item.u.mem.ptr = UnsafeMutableRawPointer(mutating: value.baseAddress)
                    item.u.mem.size = value.count
                    values.append(item)
                    if let key {
                        item = rd_kafka_vu_t()
                        item.vtype = RD_KAFKA_VTYPE_KEY
                        item.u.mem.ptr = UnsafeMutableRawPointer(mutating: key.baseAddress)
                        item.u.mem.size = key.count
                        values.append(item)
                    }
                    if let partition = record.partition {
                        item = rd_kafka_vu_t()
                        item.vtype = RD_KAFKA_VTYPE_PARTITION
                        item.u.i32 = partition
                        values.append(item)
                    }
                    if let timestamp = record.timestampMilliseconds {
                        item = rd_kafka_vu_t()
                        item.vtype = RD_KAFKA_VTYPE_TIMESTAMP
                        item.u.i64 = timestamp
                        values.append(item)
                    }
                    item = rd_kafka_vu_t()
                    item.vtype = RD_KAFKA_VTYPE_MSGFLAGS
                    item.u.i = RD_KAFKA_MSG_F_COPY
                    values.append(item)
                    item = rd_kafka_vu_t()
                    item.vtype = RD_KAFKA_VTYPE_OPAQUE
                    item.u.ptr = UnsafeMutableRawPointer(bitPattern: opaque)
                    values.append(item)
                    guard !record.headers.isEmpty else {
                        return producevaError(values)
                    }
                    // Headers are copied by librdkafka into its own header list.
                    let headerList = rd_kafka_headers_new(record.headers.count)!
                    for header in record.headers {
                        if let headerValue = header.value {
                            headerValue.withUnsafeBytes { bytes in
                                _ = rd_kafka_header_add(headerList, header.key, -1, bytes.baseAddress, bytes.count)
                            }
                        } else {
                            _ = rd_kafka_header_add(headerList, header.key, -1, nil, 0)
                        }
                    }
                    item = rd_kafka_vu_t()
                    item.vtype = RD_KAFKA_VTYPE_HEADERS
                    item.u.headers = headerList
                    values.append(item)
                    let error = producevaError(values)
                    // On success librdkafka owns the header list; on failure it is ours to free.
                    if error != RD_KAFKA_RESP_ERR_NO_ERROR { rd_kafka_headers_destroy(headerList) }
                    return error
                }
            }
        }
    }

    private func producevaError(_ values: [rd_kafka_vu_t]) -> rd_kafka_resp_err_t {
        values.withUnsafeBufferPointer { buffer in
            guard let error = rd_kafka_produceva(handle.pointer, buffer.baseAddress, buffer.count) else {
                return RD_KAFKA_RESP_ERR_NO_ERROR
            }
            defer { rd_kafka_error_destroy(error) }
            return rd_kafka_error_code(error)
        }
    }

    /// Asks for the topics' metadata now, once per topic and producer; a failure is left to the sends.
    ///
    /// librdkafka learns the leader of a topic a new producer has not written to yet on a metadata request
    /// that may go out before the broker connection is up; it then waits for its once-a-second topic scan
    /// and so do the topic's first records (measured: the first second of a steady producer delivered at
    /// once, a second late). ``send(_:)`` does this before a topic's first record; callers of
    /// ``enqueue(_:onDelivery:)`` call it before they start.
    public func prepare(topics: [String], timeout: Duration = .seconds(2)) async {
        let asked = preparedTopics.withLock { prepared in topics.filter { prepared.insert($0).inserted } }
        for topic in asked { _ = try? await partitionCount(topic: topic, timeout: timeout) }
    }

    /// Whether the cluster has `topic`, from the metadata of all its topics (asking for the topic alone may create
    /// it, where the broker creates topics on request).
    public func topicExists(_ topic: String, timeout: Duration = .seconds(10)) async throws -> Bool {
        let handle = self.handle
        return try await loop.blocking { () throws(KafkaError) in try handle.topicExists(topic, timeout: timeout) }
    }

    /// The number of partitions of `topic`, from the cluster's metadata.
    public func partitionCount(topic: String, timeout: Duration = .seconds(10)) async throws -> Int {
        let handle = self.handle
        return try await loop.blocking { () throws(KafkaError) in
            try handle.partitionCount(topic: topic, timeout: timeout)
        }
    }

    /// Waits for outstanding deliveries (up to ``KafkaProducerConfiguration/flushTimeout``), fails the
    /// rest with ``KafkaError/Code/closed`` and destroys the client. Safe to call more than once.
    public func close() async {
        await withCheckedContinuation { continuation in
            loop.requestClose(continuation)
        }
    }
}

/// The outcomes of one ``KafkaProducer/sendAll(_:)``: resumes its caller once every record's is in.
private final class DeliveryOutcomes: Sendable {
    private struct State {
        var results: [Result<DeliveryReport, KafkaError>?]
        var remaining: Int
        var continuation: CheckedContinuation<Void, Never>?
    }

    private let state: Mutex<State>

    init(count: Int) { state = Mutex(State(results: Array(repeating: nil, count: count), remaining: count)) }

    func setContinuation(_ continuation: CheckedContinuation<Void, Never>) {
        let done = state.withLock { state in
            if state.remaining == 0 { return true }
            state.continuation = continuation
            return false
        }
        if done { continuation.resume() }
    }

    func complete(_ index: Int, _ result: Result<DeliveryReport, KafkaError>) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.results[index] == nil else { return nil }
            state.results[index] = result
            state.remaining -= 1
            guard state.remaining == 0 else { return nil }
            defer { state.continuation = nil }
            return state.continuation
        }
        continuation?.resume()
    }

    func results() -> [Result<DeliveryReport, KafkaError>] {
        state.withLock { state in state.results.map { $0 ?? .failure(KafkaError.closedError) } }
    }
}

private func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBytes { body($0) }
}

/// The producer's owner thread: serves delivery reports until closed.
///
/// `@unchecked Sendable`: mutable state is behind `Mutex`es; the main queue pointer is used by the
/// owner thread only.
final class ProducerLoop: @unchecked Sendable {
    private struct State {
        var pending: [UInt: KafkaProducer.Completion] = [:]
        var nextIdentifier: UInt = 1
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var closeRequested = false
        var closed = false
        var activeBlocking = 0
    }

    let handle: RDKafkaHandle
    private let flushTimeout: Duration
    private let logger: Logger
    private let waker = Waker()
    private let mainQueue: OpaquePointer
    private let state = Mutex(State())

    init(handle: RDKafkaHandle, flushTimeout: Duration, logger: Logger) {
        self.handle = handle
        self.flushTimeout = flushTimeout
        self.logger = logger
        mainQueue = rd_kafka_queue_get_main(handle.pointer)
        waker.payload.withUnsafeBytes { payload in
            rd_kafka_queue_io_event_enable(mainQueue, waker.fileDescriptor, payload.baseAddress, payload.count)
        }
    }

    func register(_ completion: @escaping KafkaProducer.Completion) throws(KafkaError) -> UInt {
        let identifier: UInt? = state.withLock { state in
            guard !state.closeRequested else { return nil }
            let identifier = state.nextIdentifier
            state.nextIdentifier += 1
            state.pending[identifier] = completion
            return identifier
        }
        guard let identifier else { throw KafkaError.closedError }
        return identifier
    }

    func unregister(_ identifier: UInt) {
        _ = state.withLock { $0.pending.removeValue(forKey: identifier) }
    }

    func requestClose(_ continuation: CheckedContinuation<Void, Never>?) {
        let alreadyClosed = state.withLock { state -> Bool in
            if state.closed { return true }
            state.closeRequested = true
            if let continuation { state.closeWaiters.append(continuation) }
            return false
        }
        if alreadyClosed { continuation?.resume() }
        waker.wake()
    }

    func blocking<T: Sendable>(_ body: @escaping @Sendable () throws(KafkaError) -> T) async throws -> T {
        let admitted = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            state.activeBlocking += 1
            return true
        }
        guard admitted else { throw KafkaError.closedError }
        defer { state.withLock { $0.activeBlocking -= 1 } }
        return try await OwnerThread.blocking { try body() }
    }

    func run() {
        var closeDeadline: ContinuousClock.Instant?
        while true {
            serveMainQueue()
            let (closeRequested, pendingCount) = state.withLock { ($0.closeRequested, $0.pending.count) }
            if closeRequested {
                let deadline = closeDeadline ?? .now + flushTimeout
                closeDeadline = deadline
                if (pendingCount == 0 && rd_kafka_outq_len(handle.pointer) == 0) || ContinuousClock.now >= deadline {
                    break
                }
                waker.wait(milliseconds: 10)
            } else {
                waker.wait(milliseconds: 500)
            }
        }
        let (leftovers, waiters) = state.withLock { state in
            state.closed = true
            defer {
                state.pending.removeAll()
                state.closeWaiters.removeAll()
            }
            return (Array(state.pending.values), state.closeWaiters)
        }
        for completion in leftovers { completion(.failure(KafkaError.closedError)) }
        while state.withLock({ $0.activeBlocking }) > 0 { Waker.sleep(milliseconds: 1) }
        rd_kafka_queue_io_event_enable(mainQueue, -1, nil, 0)
        rd_kafka_queue_destroy(mainQueue)
        handle.destroy()
        for waiter in waiters { waiter.resume() }
    }

    private func serveMainQueue() {
        while let event = rd_kafka_queue_poll(mainQueue, 0) {
            defer { rd_kafka_event_destroy(event) }
            switch rd_kafka_event_type(event) {
            case RD_KAFKA_EVENT_DR:
                while let message = rd_kafka_event_message_next(event) {
                    let identifier = UInt(bitPattern: message.pointee._private)
                    guard let completion = state.withLock({ $0.pending.removeValue(forKey: identifier) }) else {
                        continue
                    }
                    let topic = String(cString: rd_kafka_topic_name(message.pointee.rkt))
                    if message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                        completion(
                            .success(
                                DeliveryReport(
                                    topicPartition: TopicPartition(topic, message.pointee.partition),
                                    offset: message.pointee.offset
                                )
                            )
                        )
                    } else {
                        completion(
                            .failure(KafkaError.rdkafka(message.pointee.err, context: "delivering to topic '\(topic)'"))
                        )
                    }
                }
            case RD_KAFKA_EVENT_ERROR:
                logger.warning(
                    "librdkafka producer error",
                    metadata: ["kafka.error": "\(String(cString: rd_kafka_event_error_string(event)))"]
                )
            case RD_KAFKA_EVENT_LOG:
                LibrdkafkaLog.forward(event, to: logger)
            default:
                break
            }
        }
    }
}
