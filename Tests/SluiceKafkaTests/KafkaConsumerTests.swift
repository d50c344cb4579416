import Logging
import SluiceKafka
import Synchronization
import Testing

@Suite("KafkaConsumer against the embedded cluster", .timeLimit(.minutes(2)))
struct KafkaConsumerTests {
    @Test("a group consumer gets every message once, in partition order, and commits to the end")
    func everyMessageOnceInOrder() async throws {
        let cluster = try EmbeddedKafkaCluster(brokers: 3, topics: ["orders": 4])
        let produced = try await TestSupport.produce(cluster, topic: "orders", partitions: 4, count: 20_000)
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            logger: TestSupport.logger
        )
        try await consumer.subscribe(topics: ["orders"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await TestSupport.eventually("all 20,000 messages") { received.total >= 20_000 }
        try await Task.sleep(for: .milliseconds(300))
        #expect(received.total == 20_000)
        for (topicPartition, messages) in received.byPartition {
            let offsetsInOrder = messages.map(\.offset) == Array(0..<Int64(messages.count))
            #expect(offsetsInOrder, "offsets of \(topicPartition) are 0..<\(messages.count) in order")
            let values = messages.map { String(decoding: $0.value, as: UTF8.self) }
            let valuesInOrder = values == (0..<messages.count).map { "\(topicPartition.partition):\($0)" }
            #expect(valuesInOrder, "payload sequence of \(topicPartition) is in production order")
            #expect(messages.count == produced[topicPartition.partition])
        }
        try await consumer.commit()
        let committed = try await consumer.committedOffsets(for: (0..<4).map { TopicPartition("orders", $0) })
        for partition in Int32(0)..<4 {
            #expect(committed[TopicPartition("orders", partition)] == Int64(produced[partition]!))
        }
        await consumer.close()
        await driver.value
        cluster.shutdown()
    }
}
