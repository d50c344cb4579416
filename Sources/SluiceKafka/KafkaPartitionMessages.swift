import DequeModule
import Synchronization

/// The batches of messages read from one assigned partition, in offset order.
///
/// The sequence ends when the partition is revoked, lost or the consumer closes. It has one consumer:
/// iterate it from one task. While its buffer holds ``KafkaConsumerConfiguration/partitionBufferMessages``
/// messages, or its share of ``KafkaConsumerConfiguration/partitionBufferBytes`` in bytes, the consumer stops
/// fetching that partition; taking batches lets it fetch again.
public struct KafkaPartitionMessages: AsyncSequence, Sendable {
    public typealias Element = [ConsumedMessage]
    public typealias Failure = Never

    let channel: PartitionChannel

    /// The partition these messages come from.
    public var topicPartition: TopicPartition { channel.topicPartition }

    /// This partition's share of ``KafkaConsumerConfiguration/partitionBufferBytes`` now (the budget divided
    /// by the partitions assigned), or nil when buffers are bounded by message count only.
    public var bufferByteShare: Int? { channel.byteShare.perPartition }

    public func makeAsyncIterator() -> Iterator { Iterator(channel: channel) }

    /// Iterates the batches.
    public struct Iterator: AsyncIteratorProtocol, Sendable {
        let channel: PartitionChannel

        public mutating func next() async -> [ConsumedMessage]? { await channel.next() }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> [ConsumedMessage]? {
            await channel.next()
        }
    }
}

/// Bytes for partition buffers, split evenly across the assigned partitions (the owner thread sets the share
/// on every assignment change; channels read it).
final class PartitionByteShare: Sendable {
    /// The whole budget; nil: no byte bound.
    let total: Int?
    private let share: Atomic<Int>

    init(total: Int?) {
        self.total = total
        share = Atomic(total ?? Int.max)
    }

    /// One partition's share; nil when there is no byte bound.
    var perPartition: Int? { total == nil ? nil : share.load(ordering: .relaxed) }

    /// Splits the budget across `partitions` assigned partitions.
    func assigned(_ partitions: Int) {
        guard let total else { return }
        share.store(total / max(partitions, 1), ordering: .relaxed)
    }
}

/// The buffer between the consumer's owner thread (which pushes batches) and the task that reads them.
final class PartitionChannel: Sendable {
    private struct State {
        var batches: Deque<(messages: [ConsumedMessage], bytes: Int)> = []
        var bufferedMessages = 0
        var bufferedBytes = 0
        /// A running average of a message's footprint, to turn room in bytes into room in messages before
        /// the messages are read; 0 until the first batch (its size is then bounded by librdkafka's fetch).
        var averageMessageBytes = 0
        var waiter: CheckedContinuation<[ConsumedMessage]?, Never>?
        var finished = false
        /// The owner paused fetching because the buffer was full; the reader asks for a resume once
        /// the buffer is at half.
        var flowPaused = false
    }

    let topicPartition: TopicPartition
    private let capacity: Int
    let byteShare: PartitionByteShare
    private let state = Mutex(State())
    private let requestResume: @Sendable (TopicPartition) -> Void

    init(
        topicPartition: TopicPartition, capacity: Int, byteShare: PartitionByteShare = PartitionByteShare(total: nil),
        requestResume: @escaping @Sendable (TopicPartition) -> Void
    ) {
        self.topicPartition = topicPartition
        self.capacity = capacity
        self.byteShare = byteShare
        self.requestResume = requestResume
    }

    /// No room for another message: the buffer holds its message capacity, or its byte share has no room
    /// for a message of the partition's average size.
    private func full(_ state: State) -> Bool { room(state) == 0 }

    /// At or below half of both bounds: a flow-control pause can end.
    private func halfEmpty(_ state: State) -> Bool {
        state.bufferedMessages <= capacity / 2 && state.bufferedBytes <= (byteShare.perPartition ?? Int.max) / 2
    }

    /// Room left before the buffer is full, in messages: the message bound, and the byte bound at the
    /// partition's average message size. An empty buffer always has room for one message, so a message
    /// larger than the share still gets through.
    private func room(_ state: State) -> Int {
        let messages = max(0, capacity - state.bufferedMessages)
        guard let share = byteShare.perPartition, state.averageMessageBytes > 0 else { return messages }
        let bytes = max(0, share - state.bufferedBytes) / state.averageMessageBytes
        return min(messages, state.bufferedMessages == 0 ? max(bytes, 1) : bytes)
    }

    /// Room left before the buffer is full, in messages (owner thread).
    var room: Int { state.withLock { room($0) } }

    /// What the buffer holds and whether its reader waits, for a stall report.
    var snapshot: (messages: Int, bytes: Int, readerWaiting: Bool, finished: Bool, flowPaused: Bool) {
        state.withLock { ($0.bufferedMessages, $0.bufferedBytes, $0.waiter != nil, $0.finished, $0.flowPaused) }
    }

    /// Adds a batch (owner thread). Returns whether the buffer is now full.
    func push(_ batch: [ConsumedMessage]) -> Bool {
        let bytes = byteShare.total == nil ? 0 : batch.reduce(0) { $0 + $1.memoryFootprint }
        let (waiter, full): (CheckedContinuation<[ConsumedMessage]?, Never>?, Bool) = state.withLock { state in
            if state.finished { return (nil, false) }
            if !batch.isEmpty, bytes > 0 {
                let average = bytes / batch.count
                state.averageMessageBytes =
                    state.averageMessageBytes == 0 ? average : (state.averageMessageBytes * 3 + average) / 4
            }
            if let waiter = state.waiter, state.batches.isEmpty {
                state.waiter = nil
                return (waiter, false)
            }
            state.batches.append((batch, bytes))
            state.bufferedMessages += batch.count
            state.bufferedBytes += bytes
            return (nil, self.full(state))
        }
        waiter?.resume(returning: batch)
        return full
    }

    /// Messages and bytes buffered now.
    var buffered: (messages: Int, bytes: Int) { state.withLock { ($0.bufferedMessages, $0.bufferedBytes) } }

    /// Marks the partition paused for flow control (owner thread). Returns false when the reader has
    /// meanwhile taken enough that the pause is not needed.
    func markFlowPaused() -> Bool {
        state.withLock { state in
            guard full(state) else { return false }
            state.flowPaused = true
            return true
        }
    }

    /// Ends the sequence; buffered batches are dropped (owner thread).
    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<[ConsumedMessage]?, Never>? in
            state.finished = true
            state.batches.removeAll()
            state.bufferedMessages = 0
            state.bufferedBytes = 0
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// Drops buffered batches (owner thread, after a seek).
    func discardBuffered() {
        state.withLock { state in
            state.batches.removeAll()
            state.bufferedMessages = 0
            state.bufferedBytes = 0
        }
    }

    func next() async -> [ConsumedMessage]? {
        enum Taken {
            case batch([ConsumedMessage], resume: Bool)
            case end, wait
        }
        let taken: Taken = state.withLock { state in
            if let (batch, bytes) = state.batches.popFirst() {
                state.bufferedMessages -= batch.count
                state.bufferedBytes -= bytes
                let resume = state.flowPaused && halfEmpty(state)
                if resume { state.flowPaused = false }
                return .batch(batch, resume: resume)
            }
            return state.finished ? .end : .wait
        }
        switch taken {
        case .batch(let batch, let resume):
            if resume { requestResume(topicPartition) }
            return batch
        case .end:
            return nil
        case .wait:
            if state.withLock({ $0.flowPaused }) {
                state.withLock { $0.flowPaused = false }
                requestResume(topicPartition)
            }
            return await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    let immediate: [ConsumedMessage]?? = state.withLock { state in
                        if let (batch, bytes) = state.batches.popFirst() {
                            state.bufferedMessages -= batch.count
                            state.bufferedBytes -= bytes
                            return .some(batch)
                        }
                        if state.finished || Task.isCancelled { return .some(nil) }
                        state.waiter = continuation
                        return .none
                    }
                    if let immediate { continuation.resume(returning: immediate) }
                }
            } onCancel: {
                let waiter = state.withLock { state -> CheckedContinuation<[ConsumedMessage]?, Never>? in
                    defer { state.waiter = nil }
                    return state.waiter
                }
                waiter?.resume(returning: nil)
            }
        }
    }
}
