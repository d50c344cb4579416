import Logging
import SluiceKafka
import Synchronization

/// The Kafka transaction of one pipeline of a shard whose topic has `output: exactlyOnce`.
///
/// The pipeline's handler calls hold their records here (a call's records once it succeeded, a dead letter once
/// written); every commit interval the records of messages below the watermark go out in offset order, the
/// watermark is added as the group's offset, and the transaction commits: output and offset become visible
/// together. Records of messages above the watermark (done while an earlier one is not) wait for the next
/// commit, so a transaction never holds output of a message whose offset it does not commit.
///
/// Each pipeline has a producer of its own whose transactional id names the group and the partition: starting
/// it fences the producer of any earlier owner of the partition (a pipeline that crashed, a process that died
/// or was paused past its session) and aborts its open transaction. The offsets carry the consumer's group
/// metadata as well (KIP-447): a broker that checks it refuses a commit of a member that left the generation.
final class ShardTransaction: Sendable {
    /// Makes the transactions of a host's exactly-once shards.
    struct Factory: Sendable {
        /// The host's producer settings (bootstrap, security, producer properties); the id is set per shard.
        var producerConfiguration: KafkaProducerConfiguration
        var group: String
        /// The consumer's group metadata now: the offsets of each commit carry it.
        var groupMetadata: @Sendable () throws -> KafkaConsumerGroupMetadata
        /// How often a pipeline commits (`kafka.commitInterval`).
        var interval: Duration
        /// How long one transactional call may take before it counts as failed.
        var callTimeout: Duration = .seconds(30)
        /// `transaction.timeout.ms` of the shards' producers.
        var transactionTimeout: Duration = .seconds(10)
        var logger: Logger

        func make(for topicPartition: TopicPartition) -> ShardTransaction {
            var configuration = producerConfiguration
            configuration.transactionalID = ShardTransaction.transactionalID(group: group, topicPartition)
            configuration.clientID = "sluice-transactions"
            // An owner that died leaves its transaction open until the partition's next owner starts (which aborts
            // it) or this passes: a broker that waits for it (tansu) holds the next owner that long.
            configuration.transactionTimeout = transactionTimeout
            return ShardTransaction(
                topicPartition: topicPartition, configuration: configuration, groupMetadata: groupMetadata,
                interval: interval, callTimeout: callTimeout, logger: logger)
        }
    }

    /// The transactional id of a group's partition: the same on every host, so the partition's next owner fences
    /// the last one.
    static func transactionalID(group: String, _ topicPartition: TopicPartition) -> String {
        "sluice.\(group).\(topicPartition.topic).\(topicPartition.partition)"
    }

    private struct State {
        /// Records of successful calls, each with the last offset of its call, until the watermark passes it.
        var held: [(through: Int64, records: [ProducerRecord])] = []
        /// The offset the last committed transaction gave the group.
        var committed: Int64?
        var producer: KafkaProducer?
        var closed = false
    }

    let topicPartition: TopicPartition
    let configuration: KafkaProducerConfiguration
    let groupMetadata: @Sendable () throws -> KafkaConsumerGroupMetadata
    let interval: Duration
    let callTimeout: Duration
    let logger: Logger
    private let state = Mutex(State())

    init(
        topicPartition: TopicPartition, configuration: KafkaProducerConfiguration,
        groupMetadata: @escaping @Sendable () throws -> KafkaConsumerGroupMetadata, interval: Duration,
        callTimeout: Duration, logger: Logger
    ) {
        self.topicPartition = topicPartition
        self.configuration = configuration
        self.groupMetadata = groupMetadata
        self.interval = interval
        self.callTimeout = callTimeout
        self.logger = logger
    }

    /// The offset the last transaction of this pipeline committed for the group, nil before the first.
    var committedOffset: Int64? { state.withLock { $0.committed } }

    /// Creates the producer, fences earlier ones with the id (their open transaction is aborted) and begins the
    /// first transaction.
    func start() async throws {
        let producer = try KafkaProducer(configuration: configuration, logger: logger)
        let closed = state.withLock { state -> Bool in
            if !state.closed { state.producer = producer }
            return state.closed
        }
        if closed {
            await producer.close()
            throw KafkaError(code: .closed, message: "the shard's transaction was closed before it started")
        }
        try await producer.initTransactions(timeout: callTimeout)
        try producer.beginTransaction()
    }

    /// Holds `records` of a call whose last message is `through`, until the watermark passes it.
    func hold(_ records: [ProducerRecord], through offset: Int64) {
        guard !records.isEmpty else { return }
        state.withLock { $0.held.append((offset, records)) }
    }

    /// Commits what is done below `watermark`: its held records, in offset order, and the watermark as the
    /// group's offset; then begins the next transaction. Nothing to commit (the watermark where the last commit
    /// left it) is no transaction.
    ///
    /// - Throws: the failed call's ``KafkaError`` (a record not written is one): the transaction is to be aborted.
    func commit(upTo watermark: Int64?) async throws {
        guard let watermark else { return }
        let (release, producer) = state.withLock { state -> ([ProducerRecord], KafkaProducer?) in
            guard state.committed != watermark || state.held.contains(where: { $0.through < watermark }) else {
                return ([], nil)
            }
            let due = state.held.filter { $0.through < watermark }.sorted { $0.through < $1.through }
            state.held.removeAll { $0.through < watermark }
            return (due.flatMap(\.records), state.producer)
        }
        guard let producer else { return }
        if !release.isEmpty {
            let outcomes = await producer.sendAll(release)
            for (record, outcome) in zip(release, outcomes) {
                if case .failure(let error) = outcome {
                    throw KafkaError(
                        code: error.code, message: "writing to topic '\(record.topic)': \(error.message)",
                        librdkafkaCode: error.librdkafkaCode, isFatal: error.isFatal, requiresAbort: true)
                }
            }
        }
        try await producer.sendOffsetsToTransaction(
            [TopicPartitionOffset(topicPartition, offset: watermark)], group: try groupMetadata(),
            timeout: callTimeout)
        try await producer.commitTransaction(timeout: callTimeout)
        state.withLock { $0.committed = watermark }
        try producer.beginTransaction()
    }

    /// Aborts the open transaction (its records and offsets are discarded; a fenced producer's abort fails and
    /// needs none) and closes the producer. Held records are dropped: their messages are handled again.
    func abort() async {
        let producer = takeProducer()
        if let producer {
            do {
                try await producer.abortTransaction(timeout: callTimeout)
            } catch {
                logger.warning(
                    "transaction abort failed (the broker aborts it when the next owner starts, or at its timeout)",
                    metadata: ["kafka.partition": "\(topicPartition)", "kafka.error": "\(error)"])
            }
            await producer.close()
        }
    }

    /// Closes the producer after the last commit (an open, empty transaction is aborted by the broker).
    func close() async {
        await takeProducer()?.close()
    }

    private func takeProducer() -> KafkaProducer? {
        state.withLock { state in
            defer {
                state.producer = nil
                state.held.removeAll()
                state.closed = true
            }
            return state.producer
        }
    }
}
