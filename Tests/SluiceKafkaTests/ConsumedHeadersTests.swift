import Crdkafka
import Foundation
import SluiceTesting
import Testing

@testable import SluiceKafka

@Suite("Headers of consumed messages", .timeLimit(.minutes(2)))
struct ConsumedHeadersTests {
    /// A record of format v2 from the key on: key, value length (zigzag varint), value, header count (zigzag
    /// varint) and the headers' bytes; `message` points into it as librdkafka's does.
    static func withRecord<T>(
        key: [UInt8], valueLengthField: [UInt8], value: [UInt8], after: [UInt8],
        _ body: (UnsafePointer<rd_kafka_message_t>) -> T
    ) -> T {
        let bytes = key + valueLengthField + value + after
        return bytes.withUnsafeBytes { buffer in
            var message = rd_kafka_message_t()
            message.key = UnsafeMutableRawPointer(mutating: buffer.baseAddress!)
            message.key_len = key.count
            message.payload = UnsafeMutableRawPointer(
                mutating: buffer.baseAddress! + key.count + valueLengthField.count)
            message.len = value.count
            return withUnsafePointer(to: &message) { body($0) }
        }
    }

    /// The zigzag varint of `value`, as record batches of format v2 write lengths and counts.
    static func varint(_ value: Int64) -> [UInt8] {
        var encoded = UInt64(bitPattern: (value << 1) ^ (value >> 63))
        var bytes: [UInt8] = []
        repeat {
            let low = UInt8(encoded & 0x7f)
            encoded >>= 7
            bytes.append(encoded == 0 ? low : low | 0x80)
        } while encoded != 0
        return bytes
    }

    @Test("a v2 record with a header count of 0 shows no headers; any other layout is left to librdkafka")
    func layout() {
        let key = Array("k1".utf8)
        let short = Array("v".utf8)
        let long = [UInt8](repeating: 7, count: 300)  // a two-byte length
        func shows(
            key: [UInt8] = key, lengthField: [UInt8]? = nil, value: [UInt8], after: [UInt8]
        ) -> Bool {
            Self.withRecord(
                key: key, valueLengthField: lengthField ?? Self.varint(Int64(value.count)), value: value, after: after
            ) { KafkaHeader.recordShowsNoHeaders($0) }
        }
        #expect(shows(value: short, after: [0]))
        #expect(shows(value: long, after: [0]))
        #expect(shows(key: [], value: short, after: [0]), "an empty key")
        // One header: the count's first byte is 2.
        #expect(!shows(value: short, after: Self.varint(1) + Self.varint(1) + Array("h".utf8) + Self.varint(-1)))
        // Format v1: the value's length is a 4-byte big-endian integer.
        #expect(!shows(lengthField: [0, 0, 0, UInt8(short.count)], value: short, after: [0]))
        // The value's length does not match the bytes before it.
        #expect(!shows(lengthField: Self.varint(5), value: short, after: [0]))
        // No key, or an empty value: librdkafka is asked.
        let noKey = Self.withRecord(key: [], valueLengthField: Self.varint(1), value: short, after: [0]) { pointer in
            var message = pointer.pointee
            message.key = nil
            return withUnsafePointer(to: &message) { KafkaHeader.recordShowsNoHeaders($0) }
        }
        #expect(!noKey)
        #expect(!shows(value: [], after: [0]))
    }

    /// Through the whole path (produced, fetched, converted), with and without a key, headers and compression:
    /// every message's headers are the ones it was produced with.
    @Test("every message comes with the headers it was produced with: none, some, keyed or not, compressed or not")
    func headersAsProduced() async throws {
        let cluster = try await TestClusters.start(topics: ["plain": 1, "packed": 1])
        var produced: [String: [ProducerRecord]] = [:]
        for (topic, compression) in [("plain", "none"), ("packed", "lz4")] {
            var configuration = KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
            configuration.properties["compression.type"] = compression
            let producer = try KafkaProducer(configuration: configuration, logger: TestSupport.logger)
            let records = (0..<60).map { index in
                ProducerRecord(
                    topic: topic, partition: 0, key: index % 3 == 0 ? nil : Array("k\(index)".utf8),
                    value: index % 10 == 9 ? [] : Array("value \(index)".utf8),
                    headers: index % 2 == 0
                        ? []
                        : [KafkaHeader(key: "n", value: Array("\(index)".utf8)), KafkaHeader(key: "nil", value: nil)])
            }
            for record in records { _ = try await producer.send(record) }
            await producer.close()
            produced[topic] = records
        }
        var configuration = TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("headers"))
        configuration.autoOffsetReset = .earliest
        let consumer = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["plain", "packed"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("every message read") { received.total >= 120 }
        await consumer.close()
        await driver.value
        for topic in ["plain", "packed"] {
            let messages = received.byPartition[TopicPartition(topic, 0)] ?? []
            #expect(messages.map(\.headers) == produced[topic]!.map(\.headers), "\(topic) on \(cluster.brokerName)")
            #expect(messages.map { $0.key.map(Array.init) } == produced[topic]!.map(\.key), "\(topic) keys")
        }
    }
}
