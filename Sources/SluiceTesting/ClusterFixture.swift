import Logging
import SluiceKafka

/// Conveniences over ``EmbeddedKafkaCluster`` (librdkafka's mock cluster on loopback, in process) for
/// tests that run a real host: produce, and read what a group committed. Faults are injected with the
/// cluster's own methods (`setBrokerDown`, `pushRequestErrors`, `setRoundTripTime`).
extension EmbeddedKafkaCluster {
    /// Produces `values` to `topic` (keys `keys[i % keys.count]` when given, which choose the partition)
    /// and waits for every acknowledgement; returns how many went to each partition.
    @discardableResult
    public func produce(
        topic: String, values: [String], keys: [String]? = nil, partition: Int32? = nil,
        logger: Logger = Logger(label: "sluice.testing")
    ) async throws -> [Int32: Int] {
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: bootstrapServers), logger: logger)
        var counts: [Int32: Int] = [:]
        do {
            for (index, value) in values.enumerated() {
                let key = keys.map { Array($0[index % $0.count].utf8) }
                let report = try await producer.send(ProducerRecord(topic: topic, partition: partition, key: key, value: Array(value.utf8)))
                counts[report.topicPartition.partition, default: 0] += 1
            }
        } catch {
            await producer.close()
            throw error
        }
        await producer.close()
        return counts
    }

    /// What `group` committed for `topic`'s partitions `0..<partitions` (a partition with no commit is absent).
    public func committedOffsets(
        group: String, topic: String, partitions: Int, logger: Logger = Logger(label: "sluice.testing")
    ) async throws -> [Int32: Int64] {
        let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(bootstrapServers: bootstrapServers, groupID: group), logger: logger)
        let offsets: [TopicPartition: Int64]
        do {
            offsets = try await consumer.committedOffsets(for: (0..<partitions).map { TopicPartition(topic, Int32($0)) })
        } catch {
            await consumer.close()
            throw error
        }
        await consumer.close()
        return Dictionary(uniqueKeysWithValues: offsets.map { ($0.key.partition, $0.value) })
    }
}
