import SluiceKafka
import Testing

@Suite("KafkaTopicAdmin: the control and audit topics exist before a host reads them", .timeLimit(.minutes(1)))
struct KafkaTopicAdminTests {
    @Test("an existing topic is used as it is, and its partition count is reported")
    func existing() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["__sluice-control-g": 1, "wide-control": 3])
        let control = KafkaTopicAdmin.NewTopic(name: "__sluice-control-g", config: ["cleanup.policy": "compact"])
        #expect(
            try await KafkaTopicAdmin.ensure(control, bootstrapServers: cluster.bootstrapServers, timeout: .seconds(10))
                == .existed(partitions: 1))
        let wide = KafkaTopicAdmin.NewTopic(name: "wide-control")
        #expect(
            try await KafkaTopicAdmin.ensure(wide, bootstrapServers: cluster.bootstrapServers, timeout: .seconds(10))
                == .existed(partitions: 3))
    }

    @Test(
        "a missing topic is asked for with CreateTopics; on brokers without it (the embedded cluster) it is asked for by name, which auto-creates it"
    )
    func missingOnBrokersWithoutCreateTopics() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let control = KafkaTopicAdmin.NewTopic(name: "__sluice-control-g", config: ["cleanup.policy": "compact"])
        let outcome = try await KafkaTopicAdmin.ensure(
            control, bootstrapServers: cluster.bootstrapServers, timeout: .seconds(10))
        guard case .autoCreated(let reason) = outcome else {
            Issue.record("expected the embedded cluster to refuse CreateTopics, got \(outcome)")
            return
        }
        #expect(reason.contains("mock cluster") && reason.contains("no CreateTopics"), "the reason: \(reason)")
        // Created with the mock's defaults.
        let again = try await KafkaTopicAdmin.ensure(
            control, bootstrapServers: cluster.bootstrapServers, timeout: .seconds(10))
        #expect(again == .existed(partitions: 4))
    }

    @Test("a topic description librdkafka refuses is named")
    func badDescription() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let error = await #expect(throws: KafkaError.self) {
            _ = try await KafkaTopicAdmin.ensure(
                KafkaTopicAdmin.NewTopic(name: "c", partitions: -5), bootstrapServers: cluster.bootstrapServers,
                timeout: .seconds(10))
        }
        #expect(error?.code == .configuration)
        #expect(
            error?.message.contains("topic 'c'") == true && error?.message.contains("num_partitions") == true,
            "\(String(describing: error))")
    }

    @Test("brokers that cannot be reached give a clear error instead of a hang")
    func unreachable() async throws {
        let error = await #expect(throws: KafkaError.self) {
            _ = try await KafkaTopicAdmin.ensure(
                KafkaTopicAdmin.NewTopic(name: "c"), bootstrapServers: "127.0.0.1:1", timeout: .seconds(1))
        }
        #expect(error?.message.contains("reading the cluster's topics") == true, "\(String(describing: error))")
    }
}
