import Logging
import SluiceKafka

/// The retry topics of `onFailure: retryLater`: there before the host joins, or the start is refused.
extension SluiceHost {
    /// How long the topics a host creates keep their records: longer than the longest delay (a day).
    static let retryTopicRetention = "604800000"

    /// Makes sure every retry topic exists before the host joins the group: a missing one is created with as
    /// many partitions as its topic (and 7 days' retention) when `onFailure.createTopics` is on, and refuses the
    /// start otherwise. The cluster's topics are read through the consumer, which creates none by asking. A
    /// cluster that cannot be reached is not a refusal: the consumer waits for it, and the first retry write
    /// fails (crashing its shard, which restarts) until the topic is there.
    func ensureRetryTopics(_ consumer: KafkaConsumer) async throws {
        let retryTopics = configuration.topics.compactMap { name, settings in
            settings.retryStage.map { (name: name, stage: $0, create: settings.onFailure.createTopics) }
        }.sorted { $0.name < $1.name }
        guard !retryTopics.isEmpty else { return }
        let existing: [String: Int]
        do {
            existing = try await consumer.topics(timeout: .seconds(10))
        } catch {
            logger.warning(
                "could not read the cluster's topics to check the retry topics; starting anyway",
                metadata: ["kafka.error": "\(error)"])
            return
        }
        for retryTopic in retryTopics where existing[retryTopic.name] == nil {
            let key = "topics.\(retryTopic.stage.topic).onFailure"
            guard retryTopic.create else {
                await consumer.close()
                throw SluiceError(
                    code: .configuration,
                    message:
                        "\(key): retry topic '\(retryTopic.name)' does not exist in the cluster; create it (as many partitions as '\(retryTopic.stage.topic)', a retention longer than its delay) or set \(key).createTopics: on"
                )
            }
            guard let partitions = existing[retryTopic.stage.topic], partitions > 0 else {
                await consumer.close()
                throw SluiceError(
                    code: .configuration,
                    message:
                        "\(key): retry topic '\(retryTopic.name)' does not exist, and topic '\(retryTopic.stage.topic)' (whose partition count it takes) is not in the cluster either"
                )
            }
            let outcome: KafkaTopicAdmin.Outcome
            do {
                outcome = try await KafkaTopicAdmin.ensure(
                    KafkaTopicAdmin.NewTopic(
                        name: retryTopic.name, partitions: partitions,
                        config: ["retention.ms": Self.retryTopicRetention]),
                    bootstrapServers: configuration.kafka.bootstrap, properties: configuration.controlProperties,
                    timeout: configuration.control.loadTimeout)
            } catch {
                await consumer.close()
                throw SluiceError(
                    code: .configuration,
                    message:
                        "\(key): creating retry topic '\(retryTopic.name)' failed (\(error)); create it by hand (\(partitions) partitions) and set \(key).createTopics: off"
                )
            }
            logger.notice(
                "retry topic ready",
                metadata: [
                    "kafka.topic": "\(retryTopic.name)", "kafka.partitions": "\(partitions)", "outcome": "\(outcome)",
                ])
        }
    }
}
