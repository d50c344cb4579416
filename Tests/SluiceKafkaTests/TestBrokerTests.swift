import SluiceKafka
import SluiceTesting
import Testing

@Suite("The broker the suite runs against")
struct TestBrokerTests {
    /// `make test`'s tansu pass (`SLUICE_TEST_BROKER=tansu`) must really talk to tansu, not fall back to the mock:
    /// the two answer CreateTopics differently (tansu implements it; the mock has none and auto-creates).
    @Test("is the one the pass asked for (SLUICE_TEST_BROKER): CreateTopics creates a topic on tansu, the mock leaves it to auto-creation")
    func brokerOfThePass() async throws {
        let cluster = try await TestClusters.start(topics: [:])
        let topic = KafkaTopicAdmin.NewTopic(name: "created-\(UInt32.random(in: 0...UInt32.max))", partitions: 3, replicationFactor: 1)
        let outcome = try await KafkaTopicAdmin.ensure(topic, bootstrapServers: cluster.bootstrapServers, timeout: .seconds(30))
        if TestClusters.isTansu {
            #expect(cluster.brokerName == "tansu")
            #expect(outcome == .created)
            let again = try await KafkaTopicAdmin.ensure(topic, bootstrapServers: cluster.bootstrapServers, timeout: .seconds(30))
            #expect(again == .existed(partitions: 3))
        } else {
            #expect(cluster.brokerName == "librdkafka mock")
            guard case .leftToAutoCreation = outcome else {
                Issue.record("the mock cluster has no CreateTopics, got \(outcome)")
                return
            }
        }
    }
}
