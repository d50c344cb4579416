import Foundation
import Logging
import Metrics
import ServiceLifecycle
import SluiceKafka
import Synchronization

/// The group's control and audit topics: created when missing (if allowed), refused when not compacted.
extension SluiceHost {
    /// Creates the group's control topic (one partition, compacted: the latest record of each key is the
    /// state) and its audit topic (time-retained history) when they are missing; an existing topic is used
    /// as it is, with a warning when it has more than the one partition Sluice reads.
    func ensureControlTopics(_ controlTopic: String) async throws {
        let topics = ControlPlaneWriter.topics(
            forControl: controlTopic, replicationFactor: configuration.control.replicationFactor)
        for topic in topics {
            let outcome: KafkaTopicAdmin.Outcome
            do {
                outcome = try await KafkaTopicAdmin.ensure(
                    topic, bootstrapServers: configuration.kafka.bootstrap, properties: configuration.controlProperties,
                    timeout: configuration.control.loadTimeout)
            } catch {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "control topic '\(controlTopic)' could not be read: checking that topic '\(topic.name)' exists at "
                        + "\(configuration.kafka.bootstrap) or creating it failed (\(error)); create it by hand with 1 partition and cleanup.policy="
                        + "\(topic.config["cleanup.policy"] ?? "compact") and set control.createTopics: off, or let this host create topics; "
                        + "the host does not fetch without it")
            }
            switch outcome {
            case .created:
                logger.notice(
                    "created topic",
                    metadata: [
                        "kafka.topic": "\(topic.name)",
                        "kafka.cleanup_policy": "\(topic.config["cleanup.policy"] ?? "")",
                    ])
            case .existed(let partitions) where partitions > 1:
                logger.warning(
                    "topic has more than one partition; Sluice reads and writes only partition 0",
                    metadata: ["kafka.topic": "\(topic.name)", "kafka.partitions": "\(partitions)"])
            case .existed:
                break
            case .autoCreated(let reason):
                logger.info(
                    "the brokers cannot create topics on request; the topic was asked for by name (their auto-creation, with their defaults)",
                    metadata: ["kafka.topic": "\(topic.name)", "reason": "\(reason)"])
            }
        }
    }

    /// Refuses to start when the control topic is not compacted: retention would delete the group's flags,
    /// trips and quarantines, and every host would lose them at its next start. A topic whose configuration
    /// cannot be read (the mock cluster, no DescribeConfigs ACL) is a warning.
    func checkCompacted(_ controlTopic: String) async throws {
        let described = try await KafkaTopicAdmin.configuration(
            of: controlTopic, bootstrapServers: configuration.kafka.bootstrap,
            properties: configuration.controlProperties,
            timeout: configuration.control.loadTimeout)
        switch described {
        case .entries(let entries):
            let policy = entries["cleanup.policy"] ?? "delete"
            guard policy.split(separator: ",").contains(where: { String($0).trimmingWhitespace() == "compact" }) else {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "control topic '\(controlTopic)' has cleanup.policy=\(policy); it must be compacted (cleanup.policy=compact): retention would delete the group's flags, trips and quarantines. Alter it (kafka-configs --alter --entity-type topics --entity-name \(controlTopic) --add-config cleanup.policy=compact); the host does not start on it"
                )
            }
        case .unsupported(let reason):
            logger.info(
                "the brokers cannot say whether the control topic is compacted",
                metadata: ["kafka.topic": "\(controlTopic)", "reason": "\(reason)"])
        case .unknown(let reason):
            logger.warning(
                "could not check that the control topic is compacted",
                metadata: ["kafka.topic": "\(controlTopic)", "reason": "\(reason)"])
        }
    }
}
