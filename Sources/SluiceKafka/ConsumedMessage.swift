import Crdkafka

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

    /// The headers of a message librdkafka handed over, in order.
    static func all(of message: UnsafePointer<rd_kafka_message_t>) -> [KafkaHeader] {
        var headers: [KafkaHeader] = []
        var headerList: OpaquePointer?
        guard rd_kafka_message_headers(message, &headerList) == RD_KAFKA_RESP_ERR_NO_ERROR, let headerList else {
            return headers
        }
        var index = 0
        var name: UnsafePointer<CChar>?
        var headerValue: UnsafeRawPointer?
        var size = 0
        while rd_kafka_header_get_all(headerList, index, &name, &headerValue, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
            headers.append(
                KafkaHeader(
                    key: name.map { String(cString: $0) } ?? "",
                    value: headerValue.map { [UInt8](UnsafeRawBufferPointer(start: $0, count: size)) }))
            index += 1
        }
        return headers
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
    /// The record headers, in order.
    public var headers: [KafkaHeader]
    /// The message timestamp in milliseconds since the epoch, if the broker set one.
    public var timestampMilliseconds: Int64?
    /// The buffer holding the key and the value: one reference per message, not one per field, since
    /// every copy of a message retains it.
    private let storage: KafkaBytes.Storage
    private let keyStart: UInt32
    /// -1: no key.
    private let keyCount: Int32
    private let valueStart: UInt32
    private let valueCount: UInt32

    /// The key, if the message has one.
    public var key: KafkaBytes? {
        keyCount < 0 ? nil : KafkaBytes(storage: storage, start: Int(keyStart), count: Int(keyCount))
    }

    /// The payload (empty for a null payload).
    public var value: KafkaBytes { KafkaBytes(storage: storage, start: Int(valueStart), count: Int(valueCount)) }

    /// The bytes this message holds in memory, as the memory budget counts them: key, value and headers,
    /// plus ``bookkeepingBytes`` for the message itself and its slot in a batch.
    public var memoryFootprint: Int {
        var bytes = Self.bookkeepingBytes + Int(valueCount) + max(0, Int(keyCount))
        for header in headers { bytes += header.key.utf8.count + (header.value?.count ?? 0) + 32 }
        return bytes
    }

    /// What a message costs apart from its key, value and headers (its fields, and its share of the batch
    /// array and buffer it lives in).
    public static let bookkeepingBytes = 96

    /// Creates a message; used by tests and by the consumer. A key and value from different buffers are
    /// copied into one.
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
        self.headers = headers
        self.timestampMilliseconds = timestampMilliseconds
        var key = key
        var value = value
        if let separateKey = key, separateKey.storage !== value.storage, separateKey.count > 0, value.count > 0 {
            var writer = KafkaBytes.BatchWriter()
            writer.reserve(separateKey.count + value.count)
            writer.allocate()
            key = separateKey.withUnsafeBytes { writer.copy($0.baseAddress!, count: $0.count) }
            value = value.withUnsafeBytes { writer.copy($0.baseAddress!, count: $0.count) }
        }
        self.storage = value.count > 0 ? value.storage : key?.storage ?? value.storage
        self.keyStart = key?.start ?? 0
        self.keyCount = key.map { Int32($0.count) } ?? -1
        self.valueStart = value.start
        self.valueCount = UInt32(value.count)
    }

    public static func == (lhs: ConsumedMessage, rhs: ConsumedMessage) -> Bool {
        lhs.topic == rhs.topic && lhs.partition == rhs.partition && lhs.offset == rhs.offset
            && lhs.key == rhs.key && lhs.value == rhs.value && lhs.headers == rhs.headers
            && lhs.timestampMilliseconds == rhs.timestampMilliseconds
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(topic)
        hasher.combine(partition)
        hasher.combine(offset)
        hasher.combine(key)
        hasher.combine(value)
        hasher.combine(headers)
        hasher.combine(timestampMilliseconds)
    }

    /// The partition this message came from.
    public var topicPartition: TopicPartition { TopicPartition(topic, partition) }

    /// The key as UTF-8 text, if there is a key.
    public var keyString: String? { key.map { String(decoding: $0, as: UTF8.self) } }
}
