import Crdkafka

/// Which Kafka cluster a bootstrap address leads to: the cluster id its brokers report (Kafka's
/// `cluster.id`; librdkafka's mock names itself `mockCluster…`). State a host keeps on disk records it, so
/// state of another cluster is never applied here.
public enum KafkaClusterID {
    /// Asks the cluster at `bootstrapServers` for its id with a short-lived client of its own. Throws when no
    /// broker answers within `timeout`, or the brokers report none (Kafka before 0.10.1).
    public static func query(bootstrapServers: String, properties: [String: String] = [:], timeout: Duration)
        async throws(KafkaError) -> String
    {
        try await KafkaTopicAdmin.withAdminClient(
            bootstrapServers: bootstrapServers, properties: properties, clientID: "sluice-cluster-id"
        ) {
            handle throws(KafkaError) in
            guard let id = handle.clusterID(timeout: timeout) else {
                throw KafkaError(
                    code: .timeout,
                    message: "the cluster at \(bootstrapServers) did not say its cluster id within \(timeout)")
            }
            return id
        }
    }
}
