import Foundation
import Sluice
import SluiceKafka

/// A Kafka cluster a test runs against: librdkafka's mock cluster in process (``EmbeddedKafkaCluster``) or an
/// independent Kafka-compatible broker in a process of its own (``TansuCluster``). Tests that hold on both
/// start theirs with ``TestClusters/start(topics:)``; the suite's broker pass chooses which.
public protocol TestKafkaCluster: AnyObject, Sendable {
    /// `bootstrap.servers` for clients and hosts.
    var bootstrapServers: String { get }
    /// Which broker this is, for messages: `librdkafka mock` or `tansu`.
    var brokerName: String { get }
    /// Creates a topic with `partitions` partitions and topic configuration `config` (the mock cluster keeps
    /// no topic configuration).
    func addTopic(_ name: String, partitions: Int, config: [String: String]) async throws
    /// The librdkafka properties a client needs besides `bootstrap.servers` to reach it (TLS, say); the
    /// fixture's own clients take them.
    var clientProperties: [String: String] { get }
}

extension TestKafkaCluster {
    public var clientProperties: [String: String] { [:] }

    /// Creates a topic with `partitions` partitions and the broker's default configuration.
    public func addTopic(_ name: String, partitions: Int) async throws {
        try await addTopic(name, partitions: partitions, config: [:])
    }

    /// Creates a group's control topic as hosts create it: one partition, compacted.
    public func addControlTopic(_ name: String) async throws {
        let control = ControlPlaneWriter.topics(forControl: name)[0]
        try await addTopic(name, partitions: 1, config: control.config)
    }
}

extension EmbeddedKafkaCluster: TestKafkaCluster {
    public var brokerName: String { "librdkafka mock" }

    public func addTopic(_ name: String, partitions: Int, config: [String: String]) async throws {
        try createTopic(name, partitions: partitions)
    }
}

/// Starts the cluster of the suite's broker pass: `SLUICE_TEST_BROKER=tansu` runs the tests that use it against
/// tansu (``TansuCluster``, the binary named by `SLUICE_TANSU`); otherwise, the embedded mock cluster.
public enum TestClusters {
    /// The broker of this run: `mock` (the default) or `tansu`.
    public static let broker: String = ProcessInfo.processInfo.environment["SLUICE_TEST_BROKER"] ?? "mock"

    /// Whether this run is against tansu.
    public static let isTansu: Bool = broker == "tansu"

    /// A new cluster of this run's broker with `topics` (name: partitions); `mockBrokers` brokers when it is
    /// the mock cluster (tansu runs one).
    public static func start(topics: [String: Int], mockBrokers: Int = 1) async throws -> any TestKafkaCluster {
        switch broker {
        case "tansu":
            return try await TansuCluster.start(topics: topics)
        case "mock":
            return try EmbeddedKafkaCluster(brokers: mockBrokers, topics: topics)
        default:
            throw KafkaError(
                code: .configuration, message: "SLUICE_TEST_BROKER: expected mock or tansu, got '\(broker)'")
        }
    }
}
