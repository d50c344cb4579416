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
        if recordShowsNoHeaders(message) { return headers }
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

extension KafkaHeader {
    /// Whether the record `message` came from says it has no headers, read from the record itself.
    ///
    /// `rd_kafka_message_headers` (librdkafka 2.0.2 to 2.15 at least, `rd_kafka_msg_headers_parse`) reads a
    /// record's header count through a 512-byte zeroed allocation on every call, and keeps nothing when the
    /// count is 0, so a message without headers cost an allocation, 512 bytes cleared and a free each time:
    /// 1,138 instructions a message, 16.9 % of `sluice bench` case b (docs/performance.md). A consumed message's
    /// key and value point into the fetched record (librdkafka copies neither). In a record of format v2 the
    /// value follows its length, a zigzag varint, right after the key, and the header count, a varint, comes
    /// right after the value: a first byte of 0 is a count of 0. This answers true only when that layout shows:
    /// a key and a value of at least one byte, the bytes between them exactly the varint of the value's length,
    /// and a 0 after the value. Otherwise (no key or no value, an older record format, any other layout)
    /// librdkafka is asked. Records of formats v0 and v1 have no headers at all, so even a layout that matched
    /// by chance would answer rightly.
    static func recordShowsNoHeaders(_ message: UnsafePointer<rd_kafka_message_t>) -> Bool {
        let record = message.pointee
        guard let key = record.key, let value = record.payload, record.len > 0 else { return false }
        let keyEnd = UnsafeRawPointer(key) + record.key_len
        let gap = UnsafeRawPointer(value) - keyEnd
        guard (1...5).contains(gap) else { return false }
        var encoded: UInt64 = 0
        for index in 0..<gap {
            let byte = keyEnd.load(fromByteOffset: index, as: UInt8.self)
            // Every byte but the last has its continuation bit set.
            guard (byte & 0x80 == 0) == (index == gap - 1) else { return false }
            encoded |= UInt64(byte & 0x7f) << (7 * UInt64(index))
        }
        let length = Int64(bitPattern: encoded >> 1) ^ -Int64(bitPattern: encoded & 1)
        guard length == Int64(record.len) else { return false }
        return UnsafeRawPointer(value).load(fromByteOffset: record.len, as: UInt8.self) == 0
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
