import DequeModule
import Synchronization

/// The batches of messages read from one assigned partition, in offset order.
///
/// The sequence ends when the partition is revoked, lost or the consumer closes. It has one consumer:
/// iterate it from one task. While its buffer holds ``KafkaConsumerConfiguration/partitionBufferMessages``
/// messages the consumer stops fetching that partition; taking batches lets it fetch again.
public struct KafkaPartitionMessages: AsyncSequence, Sendable {
    public typealias Element = [ConsumedMessage]
    public typealias Failure = Never

    let channel: PartitionChannel

    /// The partition these messages come from.
    public var topicPartition: TopicPartition { channel.topicPartition }

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

/// The buffer between the consumer's owner thread (which pushes batches) and the task that reads them.
final class PartitionChannel: Sendable {
    private struct State {
        var batches: Deque<[ConsumedMessage]> = []
        var bufferedMessages = 0
        var waiter: CheckedContinuation<[ConsumedMessage]?, Never>?
        var finished = false
        /// The owner paused fetching because the buffer was full; the reader asks for a resume once
        /// the buffer is at half.
        var flowPaused = false
    }

    let topicPartition: TopicPartition
    private let capacity: Int
    private let state = Mutex(State())
    private let requestResume: @Sendable (TopicPartition) -> Void

    init(topicPartition: TopicPartition, capacity: Int, requestResume: @escaping @Sendable (TopicPartition) -> Void) {
        self.topicPartition = topicPartition
        self.capacity = capacity
        self.requestResume = requestResume
    }

    /// Room left before the buffer is full (owner thread).
    var room: Int { state.withLock { max(0, capacity - $0.bufferedMessages) } }

    /// Adds a batch (owner thread). Returns whether the buffer is now full.
    func push(_ batch: [ConsumedMessage]) -> Bool {
        let (waiter, full): (CheckedContinuation<[ConsumedMessage]?, Never>?, Bool) = state.withLock { state in
            if state.finished { return (nil, false) }
            if let waiter = state.waiter, state.batches.isEmpty {
                state.waiter = nil
                return (waiter, false)
            }
            state.batches.append(batch)
            state.bufferedMessages += batch.count
            return (nil, state.bufferedMessages >= capacity)
        }
        waiter?.resume(returning: batch)
        return full
    }

    /// Marks the partition paused for flow control (owner thread). Returns false when the reader has
    /// meanwhile taken enough that the pause is not needed.
    func markFlowPaused() -> Bool {
        state.withLock { state in
            guard state.bufferedMessages >= capacity else { return false }
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
        }
    }

    func next() async -> [ConsumedMessage]? {
        enum Taken { case batch([ConsumedMessage], resume: Bool), end, wait }
        let taken: Taken = state.withLock { state in
            if let batch = state.batches.popFirst() {
                state.bufferedMessages -= batch.count
                let resume = state.flowPaused && state.bufferedMessages <= capacity / 2
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
                        if let batch = state.batches.popFirst() {
                            state.bufferedMessages -= batch.count
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
