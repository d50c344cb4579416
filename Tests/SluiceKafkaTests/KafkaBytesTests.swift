import Foundation
import SluiceTesting
import Testing

@testable import SluiceKafka

@Suite("KafkaBytes and ConsumedMessage", .timeLimit(.minutes(2)))
struct KafkaBytesTests {
    @Test("bytes compare and hash by content, whatever buffer holds them")
    func contentEquality() {
        let a = KafkaBytes("order-42")
        let b = KafkaBytes(Array("order-42".utf8))
        #expect(a == b)
        #expect(a.hashValue == b.hashValue)
        #expect(a != KafkaBytes("order-43"))
        #expect(KafkaBytes() == [])
        #expect(KafkaBytes("") == KafkaBytes())
        #expect(Set([a, b, KafkaBytes("x")]).count == 2)
    }

    @Test("the usual conversions read the bytes in place")
    func conversions() throws {
        let bytes: KafkaBytes = [0x7B, 0x22, 0x6E, 0x22, 0x3A, 0x31, 0x7D]  // {"n":1}
        #expect(String(decoding: bytes, as: UTF8.self) == "{\"n\":1}")
        #expect(Array(bytes) == Array("{\"n\":1}".utf8))
        #expect(Data(bytes) == Data("{\"n\":1}".utf8))
        struct Payload: Decodable, Equatable { let n: Int }
        #expect(try JSONDecoder().decode(Payload.self, from: Data(bytes)) == Payload(n: 1))
        #expect(bytes.withUnsafeBytes { $0.count } == 7)
        #expect(bytes.count == 7 && bytes.first == 0x7B && bytes.last == 0x7D)
        #expect(bytes.description == "{\"n\":1}")
        #expect(bytes.withContiguousStorageIfAvailable { $0.count } == 7)
    }

    @Test("a message built from a key and a value in different buffers keeps both")
    func messageFromSeparateBuffers() {
        let message = ConsumedMessage(
            topic: "orders", partition: 3, offset: 7, key: KafkaBytes("customer-1"), value: KafkaBytes("payload"),
            headers: [KafkaHeader(key: "trace", value: Array("t1".utf8))], timestampMilliseconds: 1_700_000_000_000)
        #expect(message.key == KafkaBytes("customer-1"))
        #expect(message.keyString == "customer-1")
        #expect(message.value == KafkaBytes("payload"))
        #expect(message.topicPartition == TopicPartition("orders", 3))
        let keyless = ConsumedMessage(topic: "orders", partition: 0, offset: 1, value: KafkaBytes("v"))
        #expect(keyless.key == nil)
        let emptyKey = ConsumedMessage(topic: "orders", partition: 0, offset: 1, key: KafkaBytes(), value: KafkaBytes())
        #expect(emptyKey.key == KafkaBytes() && emptyKey.value.isEmpty)
        #expect(message == message)
        #expect(message != keyless)
        let copy = ConsumedMessage(
            topic: "orders", partition: 3, offset: 7, key: KafkaBytes("customer-1"), value: KafkaBytes("payload"),
            headers: [KafkaHeader(key: "trace", value: Array("t1".utf8))], timestampMilliseconds: 1_700_000_000_000)
        #expect(message == copy && message.hashValue == copy.hashValue)
    }
}

extension KafkaBytesTests {
    /// Keys (present, absent, empty), values (null, empty, large) and headers survive the trip through the
    /// consumer's one-buffer-per-batch copy, across many batches.
    @Test("keys, values and headers arrive intact through the consumer")
    func throughTheConsumer() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["bytes": 1])
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: TestSupport.logger)
        var expected: [(key: [UInt8]?, value: [UInt8], headers: [KafkaHeader])] = []
        for index in 0..<1_000 {
            let key: [UInt8]? = index % 5 == 0 ? nil : index % 7 == 0 ? [] : Array("key-\(index)".utf8)
            let value: [UInt8] =
                index % 11 == 0
                ? [] : Array(repeating: UInt8(index % 251), count: index % 13 == 0 ? 20_000 : index % 300)
            let headers =
                index % 3 == 0
                ? [KafkaHeader(key: "n", value: Array("\(index)".utf8)), KafkaHeader(key: "null", value: nil)] : []
            expected.append((key, value, headers))
            _ = try await producer.send(
                ProducerRecord(topic: "bytes", partition: 0, key: key, value: value, headers: headers))
        }
        await producer.close()
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("bytes")),
            logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["bytes"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("all 1,000") { received.total >= 1_000 }
        let messages = received.byPartition[TopicPartition("bytes", 0)] ?? []
        #expect(messages.count == 1_000)
        for (index, message) in messages.enumerated() where index < expected.count {
            let want = expected[index]
            #expect(message.offset == Int64(index))
            // An empty key stays empty, a null key stays nil.
            #expect(message.key.map { Array($0) } == want.key, "key of \(index)")
            #expect(Array(message.value) == want.value, "value of \(index)")
            #expect(message.headers == want.headers, "headers of \(index)")
        }
        await consumer.close()
        await driver.value
    }

    /// The consumer copies each batch it takes from librdkafka into one buffer: every message of a batch
    /// it hands out refers to the same buffer, and different batches to different ones.
    @Test("the messages of one batch share one buffer")
    func oneBufferPerBatch() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["buffers": 1])
        try await TestSupport.produce(cluster, topic: "buffers", partitions: 1, count: 5_000)
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("buffers")),
            logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["buffers"])
        var sizes: [Int] = []
        var buffers: [ObjectIdentifier] = []
        var kept: [[ConsumedMessage]] = []  // keeps the buffers alive, so their identities stay distinct
        events: for await event in consumer.events {
            guard case .assigned(let partitions) = event, let messages = consumer.messages(for: partitions[0]) else {
                continue
            }
            var total = 0
            for await batch in messages {
                let shared = Set(batch.map { ObjectIdentifier($0.value.storage) })
                #expect(shared.count == 1, "a batch of \(batch.count) in \(shared.count) buffers")
                sizes.append(batch.count)
                buffers.append(contentsOf: shared)
                kept.append(batch)
                total += batch.count
                if total >= 5_000 { break events }
            }
        }
        #expect(sizes.max() ?? 0 > 1, "some batch held more than one message: \(sizes.prefix(20))")
        #expect(Set(buffers).count == buffers.count, "each of the \(kept.count) batches has a buffer of its own")
        await consumer.close()
    }
}
