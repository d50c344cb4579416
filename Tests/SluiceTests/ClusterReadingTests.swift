import SluiceKafka
import SluiceTesting
import Testing

@Suite("SluiceTesting's cluster fixture: reading a topic and a dead-letter topic", .timeLimit(.minutes(2)))
struct ClusterReadingTests {
    @Test(
        "records returns every record up to the end, in partition and offset order; deadLetters reads Sluice's headers; an empty topic is empty"
    )
    func readsTopics() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders.dlq": 2, "empty": 1])
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: HostFixture.logger)
        for (index, partition) in [1, 0, 1].enumerated() {
            let headers = [
                KafkaHeader(key: "sluice.error", value: Array("cannot price order \(index)".utf8)),
                KafkaHeader(key: "sluice.source.topic", value: Array("orders".utf8)),
                KafkaHeader(key: "sluice.source.partition", value: Array("3".utf8)),
                KafkaHeader(key: "sluice.source.offset", value: Array("\(40 + index)".utf8)),
                KafkaHeader(key: "sluice.attempts", value: Array("4".utf8)),
            ]
            _ = try await producer.send(
                ProducerRecord(
                    topic: "orders.dlq", partition: Int32(partition), key: Array("k".utf8),
                    value: Array("order \(index)".utf8), headers: headers))
        }
        await producer.close()

        let records = try await cluster.records(topic: "orders.dlq", partitions: 2)
        #expect(records.map { "\($0.partition)@\($0.offset)" } == ["0@0", "1@0", "1@1"])
        let dead = try await cluster.deadLetters(topic: "orders.dlq", partitions: 2)
        #expect(dead.map(\.text) == ["order 1", "order 0", "order 2"])
        #expect(dead.first?.error == "cannot price order 1" && dead.first?.sourceTopic == "orders")
        #expect(
            dead.map(\.sourceOffset) == [41, 40, 42] && dead.allSatisfy { $0.sourcePartition == 3 && $0.attempts == 4 })
        #expect(try await cluster.records(topic: "empty").isEmpty)
    }
}
