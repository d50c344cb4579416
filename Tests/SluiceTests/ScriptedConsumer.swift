import Logging
import SluiceKafka
import Synchronization

@testable import Sluice
@testable import SluiceKafka

/// A ``ShardConsumer`` a test scripts: it delivers the group events the test sends, keeps each assigned
/// partition's log and serves it from the last seek, and records what the host asked of it (pause sets,
/// seeks, stored offsets). Sluice's own seam, not a model of librdkafka: the Kafka layer is tested against
/// the embedded cluster.
final class ScriptedConsumer: ShardConsumer {
    struct Partition {
        var log: [Message] = []
        let channel = ScriptedMessages()
        /// The pause set as last applied (starts with the initial reasons, as at a real assignment).
        var pauseReasons: Set<KafkaPauseReason>
        var stored: Int64?
        /// The next offset after the last message delivered (librdkafka's position), nil before the first.
        var position: Int64?
    }

    private let state = Mutex<
        (
            partitions: [TopicPartition: Partition], seeks: [TopicPartitionOffset], failSeeks: Int,
            storedAfterLoss: Int, pauseCalls: Int
        )
    >(
        ([:], [], 0, 0, 0))
    private let fatal = Mutex<KafkaError?>(nil)
    private let released = Mutex<[TopicPartition]>([])
    /// When set, every request that needs the group coordinator or a partition leader (commits, offset and
    /// watermark lookups) waits for it: a coordinator that does not answer.
    let unanswered = Mutex<Hang?>(nil)
    /// When set, pause sets wait for it before they are applied: a consumer thread that is slow to answer.
    let pauseHang = Mutex<Hang?>(nil)
    let events: AsyncStream<KafkaConsumerEvent>
    private let eventsContinuation: AsyncStream<KafkaConsumerEvent>.Continuation

    init() {
        (events, eventsContinuation) = AsyncStream.makeStream(of: KafkaConsumerEvent.self)
    }

    // MARK: Scripting

    /// Assigns partitions, applying `initialPauseReasons` before anything is delivered, as the consumer does
    /// in the rebalance callback; the host hears of it later, when it handles the event.
    func assign(_ partitions: [TopicPartition], initialPauseReasons: Set<KafkaPauseReason> = []) {
        state.withLock { state in
            for topicPartition in partitions {
                state.partitions[topicPartition] = Partition(pauseReasons: initialPauseReasons)
            }
        }
    }

    func deliverAssignment(_ partitions: [TopicPartition]) { eventsContinuation.yield(.assigned(partitions)) }

    /// The session was lost: the partitions are gone (their messages end), then the host hears of it.
    func lose(_ partitions: [TopicPartition]) {
        state.withLock { state in
            for topicPartition in partitions { state.partitions.removeValue(forKey: topicPartition)?.channel.finish() }
        }
        eventsContinuation.yield(.lost(partitions))
    }

    /// The group revokes partitions; the host releases them with ``KafkaRevocation/done()``.
    func revoke(_ partitions: [TopicPartition]) {
        let revocation = KafkaRevocation(partitions: partitions, identifier: 1) { [self] _ in
            let gone = state.withLock { state in
                partitions.compactMap { state.partitions.removeValue(forKey: $0) }
            }
            for partition in gone { partition.channel.finish() }
            released.withLock { $0 += partitions }
        }
        eventsContinuation.yield(.revoked(revocation))
    }

    /// Partitions the host released after a revocation.
    var releasedPartitions: [TopicPartition] { released.withLock { $0 } }

    /// Waits while the coordinator does not answer.
    private func coordinatorAnswers() async {
        if let hang = unanswered.withLock({ $0 }) { await hang.wait() }
    }

    /// librdkafka raised a fatal error.
    func raiseFatal(_ error: KafkaError) {
        fatal.withLock { $0 = error }
        eventsContinuation.yield(.error(error))
    }

    /// Appends messages to a partition's log and delivers them (whether or not it is paused: what matters
    /// here is what the host asks for).
    /// Appends `count` messages to the partition's log; `deliver: false` leaves them on the broker (a fetcher
    /// that does not fetch).
    func append(_ topicPartition: TopicPartition, count: Int, deliver: Bool = true) {
        state.withLock { state in
            guard var partition = state.partitions[topicPartition] else { return }
            let start = Int64(partition.log.count)
            let batch = (start..<start + Int64(count)).map { offset in
                Message(
                    topic: topicPartition.topic, partition: topicPartition.partition, offset: offset,
                    key: KafkaBytes("k\(offset)"), value: KafkaBytes("\(offset)"))
            }
            partition.log += batch
            if deliver {
                partition.channel.push(batch)
                partition.position = batch.last.map { $0.offset + 1 } ?? partition.position
            }
            state.partitions[topicPartition] = partition
        }
    }

    /// The next `count` seeks fail.
    func failNextSeeks(_ count: Int) { state.withLock { $0.failSeeks = count } }

    var seeks: [TopicPartitionOffset] { state.withLock { $0.seeks } }
    func stored(_ topicPartition: TopicPartition) -> Int64? { state.withLock { $0.partitions[topicPartition]?.stored } }

    func finish() { eventsContinuation.finish() }

    // MARK: ShardConsumer

    func subscribe(topics: [String]) async throws {}

    func shardMessages(for topicPartition: TopicPartition) -> ShardMessages? {
        state.withLock { $0.partitions[topicPartition]?.channel }
    }

    func setPauseReasons(_ reasons: [TopicPartition: Set<KafkaPauseReason>]) async {
        if let hang = pauseHang.withLock({ $0 }) { await hang.wait() }
        state.withLock { state in
            state.pauseCalls += 1
            for (topicPartition, reasons) in reasons { state.partitions[topicPartition]?.pauseReasons = reasons }
        }
        calls.withLock { log in
            for (topicPartition, reasons) in reasons.sorted(by: { $0.key < $1.key }) {
                log.append("pause \(topicPartition) \(reasons.map(\.name).sorted())")
            }
        }
    }

    /// The pause sets and seeks the host asked for, in order (`pause orders/0 []`, `seek orders/0 5`).
    let calls = Mutex<[String]>([])

    /// How many times the host handed the consumer pause sets (each call may carry many partitions).
    var pauseCalls: Int { state.withLock { $0.pauseCalls } }

    func pauseReasons(for topicPartition: TopicPartition) -> Set<KafkaPauseReason> {
        state.withLock { $0.partitions[topicPartition]?.pauseReasons ?? [] }
    }

    func seek(_ topicPartition: TopicPartition, to offset: Int64) async throws {
        try state.withLock { state in
            if state.failSeeks > 0 {
                state.failSeeks -= 1
                throw KafkaError(code: .librdkafka, message: "scripted seek failure")
            }
            guard let partition = state.partitions[topicPartition] else { return }
            let start = offset == KafkaConsumer.committedOffset ? (partition.stored ?? 0) : offset
            state.seeks.append(TopicPartitionOffset(topicPartition, offset: start))
            calls.withLock { $0.append("seek \(topicPartition) \(start)") }
            // As the consumer does: what was buffered for the old position is dropped, reading restarts there.
            partition.channel.replace(with: Array(partition.log.dropFirst(Int(start))))
        }
    }

    func storeOffsets(_ offsets: [TopicPartitionOffset]) throws(KafkaError) {
        state.withLock { state in
            for offset in offsets {
                state.storedAfterLoss += state.partitions[offset.topicPartition] == nil ? 1 : 0
                state.partitions[offset.topicPartition]?.stored = offset.offset
            }
        }
    }

    /// Offsets stored for partitions this consumer no longer has.
    var storesWithoutAssignment: Int { state.withLock { $0.storedAfterLoss } }

    func commitStored() async throws { await coordinatorAnswers() }

    func close() async {
        state.withLock { state in
            for partition in state.partitions.values { partition.channel.finish() }
        }
        eventsContinuation.finish()
    }

    var commitFailureCount: Int { 0 }
    var fatalError: KafkaError? { fatal.withLock { $0 } }
    var timeSinceLastActivity: Duration { .zero }
    func cachedWatermarks(for topicPartition: TopicPartition) -> Watermarks? {
        state.withLock { $0.partitions[topicPartition].map { Watermarks(low: 0, high: Int64($0.log.count)) } }
    }
    func position(of topicPartition: TopicPartition) -> Int64? {
        state.withLock { $0.partitions[topicPartition]?.position }
    }
    /// Partitions the supervisor asked to restart the fetcher of.
    let fetcherRestarts = Locked<[TopicPartition]>([])
    func restartFetcherIfUnstarted(_ topicPartition: TopicPartition) {
        fetcherRestarts.withLock { $0.append(topicPartition) }
    }
    /// Partitions the supervisor reported stalled to the consumer.
    let stallReports = Locked<[TopicPartition]>([])
    func reportStall(_ topicPartition: TopicPartition) { stallReports.withLock { $0.append(topicPartition) } }
    func queryHighWatermarks(for partitions: [TopicPartition], timeout: Duration) async throws -> [TopicPartition:
        Int64]
    {
        await coordinatorAnswers()
        return [:]
    }
    /// Committed offsets the coordinator reports (none unless scripted).
    let committed = Locked<[TopicPartition: Int64]>([:])
    func committedOffsets(for partitions: [TopicPartition], timeout: Duration) async throws -> [TopicPartition: Int64] {
        await coordinatorAnswers()
        let committed = committed.value
        return committed.filter { partitions.contains($0.key) }
    }
    func committedProgress(for partitions: [TopicPartition], timeout: Duration) async throws -> [TopicPartition:
        TopicPartitionOffset]
    {
        await coordinatorAnswers()
        return [:]
    }
    func queryResetOffsets(for partitions: [TopicPartition], timeout: Duration) async throws -> [TopicPartition: Int64]
    {
        await coordinatorAnswers()
        return [:]
    }
}

/// A partition's messages: survives the cancellation of a reader (a pipeline that ended), as the consumer's
/// own buffer does, so the next pipeline reads on.
final class ScriptedMessages: AsyncSequence, Sendable {
    typealias Element = [Message]
    typealias Failure = Never

    private let state = Mutex<(buffered: [[Message]], waiter: CheckedContinuation<[Message]?, Never>?, finished: Bool)>(
        ([], nil, false))

    func push(_ batch: [Message]) {
        let waiter = state.withLock { state -> CheckedContinuation<[Message]?, Never>? in
            guard let waiter = state.waiter else {
                state.buffered.append(batch)
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume(returning: batch)
    }

    func replace(with messages: [Message]) {
        state.withLock { $0.buffered = [] }
        if !messages.isEmpty { push(messages) }
    }

    func finish() {
        let waiter = state.withLock { state in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    func next() async -> [Message]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate = state.withLock { state -> [Message]?? in
                    if !state.buffered.isEmpty { return .some(state.buffered.removeFirst()) }
                    if state.finished || Task.isCancelled { return .some(nil) }
                    state.waiter = continuation
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }

    struct Iterator: AsyncIteratorProtocol {
        let messages: ScriptedMessages
        mutating func next() async -> [Message]? { await messages.next() }
    }

    func makeAsyncIterator() -> Iterator { Iterator(messages: self) }
}
