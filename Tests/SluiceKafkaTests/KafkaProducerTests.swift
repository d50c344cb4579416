import SluiceKafka
import SluiceTesting
import Testing

@Suite("KafkaProducer and configuration errors", .timeLimit(.minutes(1)))
struct KafkaProducerTests {
    @Test(
        "a secret's value is never in a property error, mistyped names included; other values are shown",
        arguments: [
            ("sasl.pasword", false), ("ssl.key.pasword", false), ("sasl.oauthbearer.client.secret.typo", false),
            ("ssl.keystore.pasword", false),
            ("acks", true), ("security.protocol", true),
        ])
    func secretsNotPrinted(name: String, shown: Bool) throws {
        let value = "hunter2-\(UInt32.random(in: 0...UInt32.max))"
        var configuration = KafkaProducerConfiguration(bootstrapServers: "127.0.0.1:1")
        configuration.properties = [name: value]
        let error = #expect(throws: KafkaError.self) {
            _ = try KafkaProducer(configuration: configuration, logger: TestSupport.logger)
        }
        let text = "\(error.map { String(describing: $0) } ?? "")"
        #expect(text.contains(name), "names the property: \(text)")
        #expect(text.contains(value) == shown, "\(text)")
    }

    /// A producer of `cluster` with the default settings.
    static func producer(_ cluster: EmbeddedKafkaCluster) throws -> KafkaProducer {
        try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: TestSupport.logger)
    }

    @Test("send returns the delivery report with the partition and consecutive offsets")
    func deliveryReports() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["events": 3])
        let producer = try Self.producer(cluster)
        var offsets: [Int64] = []
        for index in 0..<5 {
            let report = try await producer.send(
                ProducerRecord(
                    topic: "events", partition: 2, key: Array("k".utf8), value: Array("v\(index)".utf8),
                    headers: [KafkaHeader(key: "trace", value: Array("t\(index)".utf8))]))
            #expect(report.topicPartition == TopicPartition("events", 2))
            offsets.append(report.offset)
        }
        #expect(offsets == [0, 1, 2, 3, 4])
        #expect(try await producer.partitionCount(topic: "events") == 3)
        await producer.close()
    }

    @Test("a record's timestamp is the one given (an event's time carried on), else the time it was produced")
    func timestamps() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["events": 1])
        let producer = try Self.producer(cluster)
        _ = try await producer.send(ProducerRecord(topic: "events", value: [1], timestampMilliseconds: 1_234_567))
        _ = try await producer.send(ProducerRecord(topic: "events", value: [2]))
        await producer.close()
        let records = try await cluster.records(topic: "events")
        #expect(records.count == 2)
        #expect(records.first?.timestampMilliseconds == 1_234_567)
        #expect((records.last?.timestampMilliseconds ?? 0) > 1_700_000_000_000)
    }

    @Test("a send to a partition that does not exist fails with a clear error")
    func unknownPartition() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["events": 1])
        let producer = try Self.producer(cluster)
        let error = await #expect(throws: KafkaError.self) {
            _ = try await producer.send(ProducerRecord(topic: "events", partition: 7, value: Array("x".utf8)))
        }
        #expect(error?.code == .unknownPartition)
        #expect(error?.message.contains("events") == true)
        await producer.close()
    }

    @Test("a bad librdkafka property names the property")
    func badPropertyName() throws {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: "127.0.0.1:1", groupID: "g")
        configuration.properties["fetch.wait.max.mss"] = "10"
        let error = #expect(throws: KafkaError.self) {
            _ = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        }
        #expect(error?.code == .configuration)
        #expect(error?.message.contains("fetch.wait.max.mss") == true)
        #expect(error?.message.contains("No such configuration property") == true)

        var producerConfiguration = KafkaProducerConfiguration(bootstrapServers: "127.0.0.1:1")
        producerConfiguration.properties["linger.ms"] = "not-a-number"
        let producerError = #expect(throws: KafkaError.self) {
            _ = try KafkaProducer(configuration: producerConfiguration, logger: TestSupport.logger)
        }
        #expect(producerError?.message.contains("linger.ms") == true)
    }

    @Test("properties the consumer owns cannot be overridden")
    func ownedProperty() throws {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: "127.0.0.1:1", groupID: "g")
        configuration.properties["enable.auto.offset.store"] = "true"
        let error = #expect(throws: KafkaError.self) {
            _ = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        }
        #expect(error?.message.contains("enable.auto.offset.store") == true)
    }
}
