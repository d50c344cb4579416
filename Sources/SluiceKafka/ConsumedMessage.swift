/// A Kafka record header.
public struct KafkaHeader: Hashable, Sendable {
    /// Header name.
    public var key: String
    /// Header value; `nil` for a null value.
    public var value: [UInt8]?

    /// Creates a header.
    public init(key: String, value: [UInt8]?) {
        self.key = key
        self.value = value
    }
}

/// A message read from a partition. Its key and value were copied once out of librdkafka's buffer, together
/// with the rest of their batch (see ``KafkaBytes``).
public struct ConsumedMessage: Sendable, Hashable {
    /// The topic.
    public var topic: String
    /// The partition.
    public var partition: Int32
    /// The message's offset in its partition.
    public var offset: Int64
    /// The key, if the message has one.
    public var key: KafkaBytes?
    /// The payload (empty for a null payload).
    public var value: KafkaBytes
    /// The record headers, in order.
    public var headers: [KafkaHeader]
    /// The message timestamp in milliseconds since the epoch, if the broker set one.
    public var timestampMilliseconds: Int64?

    /// Creates a message; used by tests and by the consumer.
    public init(
        topic: String,
        partition: Int32,
        offset: Int64,
        key: KafkaBytes? = nil,
        value: KafkaBytes,
        headers: [KafkaHeader] = [],
        timestampMilliseconds: Int64? = nil
    ) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestampMilliseconds = timestampMilliseconds
    }

    /// The partition this message came from.
    public var topicPartition: TopicPartition { TopicPartition(topic, partition) }

    /// The key as UTF-8 text, if there is a key.
    public var keyString: String? { key.map { String(decoding: $0, as: UTF8.self) } }
}
