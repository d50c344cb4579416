import Logging
import SluiceKafka

/// The topics a host writes to on its own: dead-letter topics, which must exist, and the retry topics of
/// `onFailure: retryLater`, which exist or are created. Checked before the host joins the group.
extension SluiceHost {
    /// How long the topics a host creates keep their records: longer than the longest delay (a day).
    static let retryTopicRetention = "604800000"

    /// Reads the cluster's topics once (through the consumer: asking for all topics creates none) and refuses
    /// to start when a dead-letter topic is missing (the first failure would otherwise hang in the producer, or
    /// create the topic with broker defaults) or a retry topic is missing and may not be created; a missing
    /// retry topic is otherwise created with as many partitions as its topic and 7 days' retention. A cluster
    /// that cannot be reached is not a refusal: the consumer waits for it, and the first write there fails
    /// (crashing its shard, which restarts) until the topic is there.
    func checkTopics(_ consumer: KafkaConsumer) async throws {
        // A retry topic's configuration carries its topic's dead-letter topic: each is checked once.
        let deadLetterTopics = configuration.topics.compactMap { topic, settings in
            settings.deadLetterTopic.map { (topic: settings.retryStage?.topic ?? topic, deadLetterTopic: $0) }
        }
        let retryTopics = configuration.topics.compactMap { name, settings in
            settings.retryStage.map { (name: name, stage: $0, create: settings.onFailure.createTopics) }
        }.sorted { $0.name < $1.name }
        guard !deadLetterTopics.isEmpty || !retryTopics.isEmpty else { return }
        let existing: [String: Int]
        do {
            existing = try await consumer.topics(timeout: .seconds(10))
        } catch {
            logger.warning(
                "could not read the cluster's topics to check the dead-letter and retry topics; starting anyway",
                metadata: ["kafka.error": "\(error)"])
            return
        }
        for (topic, deadLetterTopic) in deadLetterTopics.sorted(by: { $0.topic < $1.topic })
        where existing[deadLetterTopic] == nil {
            throw SluiceError(
                code: .configuration,
                message:
                    "topics.\(topic).deadLetterTopic: topic '\(deadLetterTopic)' does not exist in the cluster; create it (Sluice does not create topics)"
            )
        }
        for retryTopic in retryTopics where existing[retryTopic.name] == nil {
            try await createRetryTopic(
                retryTopic.name, of: retryTopic.stage.topic, allowed: retryTopic.create, existing)
        }
    }

    /// Creates the missing retry topic `name` of `topic` with `topic`'s partition count, or refuses the start.
    private func createRetryTopic(_ name: String, of topic: String, allowed: Bool, _ existing: [String: Int])
        async throws
    {
        let key = "topics.\(topic).onFailure"
        guard allowed else {
            throw SluiceError(
                code: .configuration,
                message:
                    "\(key): retry topic '\(name)' does not exist in the cluster; create it (as many partitions as '\(topic)', a retention longer than its delay) or set \(key).createTopics: on"
            )
        }
        guard let partitions = existing[topic], partitions > 0 else {
            throw SluiceError(
                code: .configuration,
                message:
                    "\(key): retry topic '\(name)' does not exist, and topic '\(topic)' (whose partition count it takes) is not in the cluster either"
            )
        }
        let outcome: KafkaTopicAdmin.Outcome
        do {
            outcome = try await KafkaTopicAdmin.ensure(
                KafkaTopicAdmin.NewTopic(
                    name: name, partitions: partitions, config: ["retention.ms": Self.retryTopicRetention]),
                bootstrapServers: configuration.kafka.bootstrap, properties: configuration.controlProperties,
                timeout: configuration.control.loadTimeout)
        } catch {
            throw SluiceError(
                code: .configuration,
                message:
                    "\(key): creating retry topic '\(name)' failed (\(error)); create it by hand (\(partitions) partitions) and set \(key).createTopics: off"
            )
        }
        logger.notice(
            "retry topic ready",
            metadata: ["kafka.topic": "\(name)", "kafka.partitions": "\(partitions)", "outcome": "\(outcome)"])
    }
}
