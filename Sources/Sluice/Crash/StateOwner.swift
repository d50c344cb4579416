/// The Kafka cluster and consumer group a host's state on disk belongs to. State of another owner (a state
/// directory reused against another cluster, or by another group) is set aside, never applied.
struct StateOwner: Sendable, Hashable, CustomStringConvertible {
    /// The cluster id its brokers report.
    var cluster: String
    /// The consumer group (`kafka.group`).
    var group: String

    var description: String { "cluster \(cluster), group \(group)" }
}
