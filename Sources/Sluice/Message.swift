import SluiceKafka

/// A message delivered to a handler. Its key and value share storage with the bytes copied out of
/// librdkafka once; passing it around copies nothing.
public struct Message: Sendable, Hashable {
    /// The topic.
    public var topic: String
    /// The partition.
    public var partition: Int32
    /// The offset in the partition.
    public var offset: Int64
    /// The key, if any.
    public var key: [UInt8]?
    /// The payload.
    public var value: [UInt8]
    /// Record headers, in order.
    public var headers: [KafkaHeader]
    /// The broker timestamp in milliseconds since the epoch, if set.
    public var timestampMilliseconds: Int64?

    /// Creates a message (for tests and test kits).
    public init(
        topic: String, partition: Int32, offset: Int64, key: [UInt8]? = nil, value: [UInt8],
        headers: [KafkaHeader] = [], timestampMilliseconds: Int64? = nil
    ) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestampMilliseconds = timestampMilliseconds
    }

    init(_ consumed: ConsumedMessage) {
        self.init(
            topic: consumed.topic, partition: consumed.partition, offset: consumed.offset, key: consumed.key,
            value: consumed.value, headers: consumed.headers, timestampMilliseconds: consumed.timestampMilliseconds)
    }

    /// The key as UTF-8 text, if there is a key.
    public var keyString: String? { key.map { String(decoding: $0, as: UTF8.self) } }
}
