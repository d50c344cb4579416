import SluiceKafka

/// A shard's messages, as the pipeline reads them.
typealias ShardMessages = any AsyncSequence<[Message], Never> & Sendable

/// The consumer operations the host and its supervisor loop use: Sluice's own seam over ``KafkaConsumer``
/// (not a model of librdkafka), so the orchestration is tested without a cluster. `KafkaConsumer` is the
/// production conformance; tests supply their own.
protocol ShardConsumer: Sendable {
    /// Group membership changes; ends when the consumer is closed.
    var events: AsyncStream<KafkaConsumerEvent> { get }
    func subscribe(topics: [String]) async throws
    /// An assigned partition's messages, nil when it is not assigned.
    func shardMessages(for topicPartition: TopicPartition) -> ShardMessages?
    /// Desired state: the whole pause set of each partition given, in one round trip.
    func setPauseReasons(_ reasons: [TopicPartition: Set<KafkaPauseReason>]) async
    func pauseReasons(for topicPartition: TopicPartition) -> Set<KafkaPauseReason>
    func seek(_ topicPartition: TopicPartition, to offset: Int64) async throws
    func storeOffsets(_ offsets: [TopicPartitionOffset]) throws(KafkaError)
    func commitStored() async throws
    func close() async

    var commitFailureCount: Int { get }
    var fatalError: KafkaError? { get }
    var timeSinceLastActivity: Duration { get }
    func cachedWatermarks(for topicPartition: TopicPartition) -> Watermarks?
    func position(of topicPartition: TopicPartition) -> Int64?
    /// Restarts the partition's fetcher if it delivered nothing since it was assigned (see
    /// ``KafkaConsumer/restartFetcherIfUnstarted(_:)``).
    func restartFetcherIfUnstarted(_ topicPartition: TopicPartition)
    /// Logs the consumer's view of a partition reported stalled (see ``KafkaConsumer/reportStall(_:)``).
    func reportStall(_ topicPartition: TopicPartition)

    /// Lag queries (network round trips; never from the supervisor loop).
    func queryHighWatermarks(for partitions: [TopicPartition], timeout: Duration) async throws -> [TopicPartition:
        Int64]
    func committedOffsets(for partitions: [TopicPartition], timeout: Duration) async throws -> [TopicPartition: Int64]
    /// Committed offsets with their commit metadata (what the last owner finished above them).
    func committedProgress(for partitions: [TopicPartition], timeout: Duration) async throws -> [TopicPartition:
        TopicPartitionOffset]
    func queryResetOffsets(for partitions: [TopicPartition], timeout: Duration) async throws -> [TopicPartition: Int64]
    /// Where the partition was started past the group's commit, from a dead process's progress (see
    /// ``KafkaConsumer/resume(from:)``), with the metadata naming what is done above it.
    func resumedPosition(of topicPartition: TopicPartition) -> TopicPartitionOffset?
    /// The id of the Kafka cluster the consumer is connected to, once known (no request).
    var clusterID: String? { get }
}

extension ShardConsumer {
    func resumedPosition(of topicPartition: TopicPartition) -> TopicPartitionOffset? { nil }
    var clusterID: String? { nil }
}

extension KafkaConsumer: ShardConsumer {
    func shardMessages(for topicPartition: TopicPartition) -> ShardMessages? { messages(for: topicPartition) }
    func commitStored() async throws { try await commit() }
}
