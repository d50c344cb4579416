/// A partition of a topic.
public struct TopicPartition: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The topic name.
    public var topic: String
    /// The partition number.
    public var partition: Int32

    /// Creates a topic-partition.
    public init(_ topic: String, _ partition: Int32) {
        self.topic = topic
        self.partition = partition
    }

    /// `topic/partition`, the form flag keys and logs use.
    public var description: String { "\(topic)/\(partition)" }

    public static func < (lhs: TopicPartition, rhs: TopicPartition) -> Bool {
        (lhs.topic, lhs.partition) < (rhs.topic, rhs.partition)
    }
}

/// A topic-partition with an offset: the next offset to read, or an offset to commit.
public struct TopicPartitionOffset: Hashable, Sendable, CustomStringConvertible {
    /// The partition.
    public var topicPartition: TopicPartition
    /// The offset. For commits this is the offset of the next message to consume (last done + 1).
    public var offset: Int64
    /// Commit metadata stored with the offset (Kafka keeps a short string beside each committed offset).
    public var metadata: String?

    /// Creates a partition offset.
    public init(_ topicPartition: TopicPartition, offset: Int64, metadata: String? = nil) {
        self.topicPartition = topicPartition
        self.offset = offset
        self.metadata = metadata
    }

    public var description: String { "\(topicPartition)@\(offset)" }
}

/// The low and high watermark of a partition: the first offset the broker holds and the offset the
/// next produced message will get.
public struct Watermarks: Hashable, Sendable {
    /// The first offset still held by the broker.
    public var low: Int64
    /// The offset the next produced message will get.
    public var high: Int64

    /// Creates watermarks.
    public init(low: Int64, high: Int64) {
        self.low = low
        self.high = high
    }
}
