import Crdkafka
import DequeModule
import Logging
import Synchronization

/// What a ``KafkaConsumer`` and its owner thread share. Everything mutable is behind a `Mutex`.
final class ConsumerShared: Sendable {
    enum Command {
        /// Answers the command as a closed consumer does.
        func failClosed() {
            switch self {
            case .subscribe(_, let continuation), .seek(_, let continuation), .commit(let continuation):
                continuation.resume(throwing: KafkaError.closedError)
            case .setPauseReasons(_, let continuation):
                continuation.resume()
            case .close(let continuation):
                continuation?.resume()
            case .releaseRevocation, .restartUnstarted, .reportStall:
                break
            }
        }

        case subscribe([String], CheckedContinuation<Void, any Error>)
        case setPauseReasons([TopicPartition: Set<KafkaPauseReason>], CheckedContinuation<Void, Never>)
        case seek(TopicPartitionOffset, CheckedContinuation<Void, any Error>)
        case commit(CheckedContinuation<Void, any Error>)
        case releaseRevocation(UInt64)
        case restartUnstarted(TopicPartition)
        case reportStall(TopicPartition)
        case close(CheckedContinuation<Void, Never>?)
    }

    struct Inbox {
        var commands: Deque<Command> = []
        var resumeRequests: Set<TopicPartition> = []
        /// The owner thread took its last inbox: commands sent from now on are answered by the sender.
        var closed = false
    }

    private struct HandleUse {
        var active = 0
        var closed = false
    }

    let handle: RDKafkaHandle
    let configuration: KafkaConsumerConfiguration
    let initialPauseReasons: KafkaConsumer.InitialPauseReasons
    let eventsContinuation: AsyncStream<KafkaConsumerEvent>.Continuation
    let logger: Logger
    let waker = Waker()
    private let inbox = Mutex(Inbox())
    private let handleUse = Mutex(HandleUse())
    /// The message buffers of assigned partitions; written by the owner thread only.
    let channels = Mutex<[TopicPartition: PartitionChannel]>([:])
    /// ``KafkaConsumerConfiguration/partitionBufferBytes``, split across the assigned partitions.
    let bufferBytes: PartitionByteShare
    /// When the owner thread last went round its loop, in nanoseconds since ``ConsumerShared/epoch``.
    let lastLoop = Atomic<Int64>(0)
    static let epoch = ContinuousClock.now

    /// Records that the owner thread is turning (owner thread).
    func noteLoop() {
        lastLoop.store((ContinuousClock.now - Self.epoch).nanoseconds, ordering: .relaxed)
    }

    /// The first fatal error librdkafka raised, if any.
    let fatalError = Mutex<KafkaError?>(nil)
    /// Commits that failed (periodic, caller, revocation and close alike), for metrics.
    let commitFailures = Atomic<Int>(0)
    /// Commit requests sent for callers of `commit()` (one per round of callers that asked while the last was out).
    let callerCommitsSent = Atomic<Int>(0)
    /// Set when offsets were stored since the last periodic commit, so idle consumers do not commit.
    let offsetsStored = Atomic<Bool>(false)
    /// The last offset (with its commit metadata) stored per assigned partition: commits send these as an
    /// explicit list, because librdkafka before 2.2 drops the metadata of stored offsets. Cleared when the
    /// partition is released, so nothing is committed for a partition this member no longer has.
    let storedProgress = Mutex<[TopicPartition: TopicPartitionOffset]>([:])
    /// Where a dead predecessor got to, by cluster id and partition (``KafkaConsumer/resume(from:)``): taken by
    /// the first assignment, nil from then on.
    let pendingResume = Mutex<[String: [TopicPartition: TopicPartitionOffset]]?>(nil)
    /// The positions assigned partitions were started at from ``pendingResume``, until released.
    let resumed = Mutex<[TopicPartition: TopicPartitionOffset]>([:])
    /// Pause reasons per assigned partition, as the owner last applied them.
    let pauseSnapshot = Mutex<[TopicPartition: Set<KafkaPauseReason>]>([:])

    init(
        handle: RDKafkaHandle,
        configuration: KafkaConsumerConfiguration,
        initialPauseReasons: @escaping KafkaConsumer.InitialPauseReasons,
        events: AsyncStream<KafkaConsumerEvent>.Continuation,
        logger: Logger
    ) {
        self.handle = handle
        self.configuration = configuration
        bufferBytes = PartitionByteShare(total: configuration.partitionBufferBytes)
        self.initialPauseReasons = initialPauseReasons
        self.eventsContinuation = events
        self.logger = logger
    }

    /// Hands a command to the owner thread; once that thread is gone, answers it at once as a closed
    /// consumer would, so no caller waits for ever.
    func send(_ command: Command) {
        let accepted = inbox.withLock { inbox -> Bool in
            guard !inbox.closed else { return false }
            inbox.commands.append(command)
            return true
        }
        guard accepted else {
            command.failClosed()
            return
        }
        waker.wake()
    }

    /// Asks the owner to resume a partition paused for flow control.
    func requestResume(_ topicPartition: TopicPartition) {
        inbox.withLock { _ = $0.resumeRequests.insert(topicPartition) }
        waker.wake()
    }

    /// Takes everything sent to the owner so far (owner thread). `last`: the owner stops taking commands.
    func takeInbox(last: Bool = false) -> Inbox {
        inbox.withLock { inbox in
            defer { inbox = Inbox(closed: last || inbox.closed) }
            return inbox
        }
    }

    /// Runs a non-blocking, thread-safe librdkafka call, unless the handle is being destroyed.
    func withHandle<T>(_ body: (RDKafkaHandle) throws(KafkaError) -> T) throws(KafkaError) -> T {
        let admitted = handleUse.withLock { use -> Bool in
            if use.closed { return false }
            use.active += 1
            return true
        }
        guard admitted else { throw KafkaError.closedError }
        defer { handleUse.withLock { $0.active -= 1 } }
        return try body(handle)
    }

    /// Runs a blocking librdkafka call on a Dispatch worker thread.
    func blocking<T: Sendable>(_ body: @escaping @Sendable (RDKafkaHandle) throws(KafkaError) -> T) async throws -> T {
        try await OwnerThread.blocking { [self] in
            try self.withHandle { handle throws(KafkaError) in try body(handle) }
        }
    }

    /// Refuses further handle use and waits for calls in progress to return (owner thread, at close).
    func retireHandle() {
        handleUse.withLock { $0.closed = true }
        while handleUse.withLock({ $0.active }) > 0 {
            Waker.sleep(milliseconds: 1)
        }
    }
}
