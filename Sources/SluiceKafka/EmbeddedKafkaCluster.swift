import Crdkafka
import Logging
import Synchronization

/// A Kafka cluster inside this process: librdkafka's mock cluster (`rd_kafka_mock_cluster_new`), which
/// speaks the real protocol on loopback ports and can inject faults. For development and tests.
///
/// Quirks of librdkafka 2.0.2's mock that users of it see:
/// - It keeps at most 5 MiB per partition; older messages are dropped.
/// - It answers fetches slowly unless the consumer's `fetch.wait.max.ms` is small (Sluice's default
///   is 10 ms).
/// - Its group coordinator waits 3 s before the first join completes, needs `session.timeout.ms` above
///   3000 (use 6000 in tests), makes later rebalances wait `session.timeout.ms` − 1 s unless every member
///   rejoins, and rejects commits while the group is joining (real Kafka accepts them) with
///   `ILLEGAL_GENERATION`, after which librdkafka treats the member's assignment as lost.
/// - It has no CreateTopics: topics are created here with ``createTopic(_:partitions:replicationFactor:)``.
/// - Its brokers listen on ephemeral ports chosen at start.
public final class EmbeddedKafkaCluster: Sendable {
    private let handle: RDKafkaHandle
    /// `rd_kafka_mock_cluster_t *`. `nonisolated(unsafe)`: the pointer never changes, and librdkafka's
    /// mock API is thread-safe (each call hands an operation to the mock cluster's own thread).
    private nonisolated(unsafe) let cluster: OpaquePointer
    private let destroyed = Mutex(false)

    /// The `bootstrap.servers` string clients use.
    public let bootstrapServers: String
    /// The number of brokers.
    public let brokerCount: Int

    /// Starts a cluster of `brokers` brokers and creates `topics` (name → partition count).
    public init(brokers: Int = 1, topics: [String: Int] = [:]) throws(KafkaError) {
        guard brokers >= 1 else {
            throw .configuration("an embedded cluster needs at least one broker, got \(brokers)")
        }
        handle = try RDKafkaHandle(
            type: RD_KAFKA_PRODUCER,
            properties: [("log_level", "3")],
            events: 0,
            logger: "embedded cluster host"
        )
        guard let cluster = rd_kafka_mock_cluster_new(handle.pointer, Int32(brokers)) else {
            throw KafkaError(code: .librdkafka, message: "rd_kafka_mock_cluster_new failed")
        }
        self.cluster = cluster
        self.brokerCount = brokers
        self.bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
        for (name, partitions) in topics.sorted(by: { $0.key < $1.key }) {
            try createTopic(name, partitions: partitions)
        }
    }

    deinit { shutdown() }

    /// Creates a topic.
    public func createTopic(_ name: String, partitions: Int, replicationFactor: Int = 1) throws(KafkaError) {
        guard !name.isEmpty else { throw .configuration("a topic name cannot be empty") }
        guard partitions >= 1 else {
            throw .configuration("topic '\(name)' needs at least one partition, got \(partitions)")
        }
        guard (1...brokerCount).contains(replicationFactor) else {
            throw .configuration(
                "topic '\(name)': replication factor \(replicationFactor) needs 1...\(brokerCount) brokers")
        }
        let error = rd_kafka_mock_topic_create(cluster, name, Int32(partitions), Int32(replicationFactor))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw .rdkafka(error, context: "creating topic '\(name)'") }
    }

    /// Takes a broker down: its connections close and it refuses new ones.
    public func setBrokerDown(_ broker: Int32) throws(KafkaError) {
        try check(broker)
        try checked(rd_kafka_mock_broker_set_down(cluster, broker), "taking broker \(broker) down")
    }

    /// Brings a broker back up.
    public func setBrokerUp(_ broker: Int32) throws(KafkaError) {
        try check(broker)
        try checked(rd_kafka_mock_broker_set_up(cluster, broker), "bringing broker \(broker) up")
    }

    /// Delays every response of a broker by `roundTripTime`.
    public func setRoundTripTime(broker: Int32, _ roundTripTime: Duration) throws(KafkaError) {
        try check(broker)
        try checked(
            rd_kafka_mock_broker_set_rtt(cluster, broker, Int32(clamping: roundTripTime.milliseconds)),
            "setting the round-trip time of broker \(broker)")
    }

    /// Makes the next requests of `apiKey` (cluster-wide) fail with `errors`, one error per request.
    public func pushRequestErrors(apiKey: KafkaAPIKey, errors: [KafkaErrorCode]) {
        var codes = errors.map { rd_kafka_resp_err_t($0.rawValue) }
        rd_kafka_mock_push_request_errors_array(cluster, apiKey.rawValue, codes.count, &codes)
    }

    /// Makes `broker` the leader of a partition.
    public func setPartitionLeader(_ topicPartition: TopicPartition, broker: Int32) throws(KafkaError) {
        try check(broker)
        try checked(
            rd_kafka_mock_partition_set_leader(cluster, topicPartition.topic, topicPartition.partition, broker),
            "moving the leader of \(topicPartition)")
    }

    /// Makes `broker` the coordinator of a consumer group.
    public func setGroupCoordinator(group: String, broker: Int32) throws(KafkaError) {
        try check(broker)
        try checked(
            rd_kafka_mock_coordinator_set(cluster, "group", group, broker), "moving the coordinator of \(group)")
    }

    /// Stops the brokers. Called by `deinit` too.
    public func shutdown() {
        let first = destroyed.withLock { destroyed -> Bool in
            defer { destroyed = true }
            return !destroyed
        }
        guard first else { return }
        rd_kafka_mock_cluster_destroy(cluster)
    }

    private func check(_ broker: Int32) throws(KafkaError) {
        guard (1...Int32(brokerCount)).contains(broker) else {
            throw .configuration("broker \(broker) does not exist; brokers are 1...\(brokerCount)")
        }
    }

    private func checked(_ error: rd_kafka_resp_err_t, _ context: String) throws(KafkaError) {
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw .rdkafka(error, context: context) }
    }
}

/// A Kafka protocol API, named for fault injection.
public struct KafkaAPIKey: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }

    public static let produce = KafkaAPIKey(rawValue: 0)
    public static let fetch = KafkaAPIKey(rawValue: 1)
    public static let listOffsets = KafkaAPIKey(rawValue: 2)
    public static let metadata = KafkaAPIKey(rawValue: 3)
    public static let offsetCommit = KafkaAPIKey(rawValue: 8)
    public static let offsetFetch = KafkaAPIKey(rawValue: 9)
    public static let findCoordinator = KafkaAPIKey(rawValue: 10)
    public static let joinGroup = KafkaAPIKey(rawValue: 11)
    public static let heartbeat = KafkaAPIKey(rawValue: 12)
    public static let leaveGroup = KafkaAPIKey(rawValue: 13)
    public static let syncGroup = KafkaAPIKey(rawValue: 14)
    public static let apiVersions = KafkaAPIKey(rawValue: 18)
    public static let initProducerID = KafkaAPIKey(rawValue: 22)

    /// The names ``init(name:)`` accepts, in protocol order.
    public static let named: [(String, KafkaAPIKey)] = [
        ("Produce", .produce), ("Fetch", .fetch), ("ListOffsets", .listOffsets), ("Metadata", .metadata),
        ("OffsetCommit", .offsetCommit), ("OffsetFetch", .offsetFetch), ("FindCoordinator", .findCoordinator),
        ("JoinGroup", .joinGroup), ("Heartbeat", .heartbeat), ("LeaveGroup", .leaveGroup),
        ("SyncGroup", .syncGroup), ("ApiVersions", .apiVersions), ("InitProducerId", .initProducerID),
    ]

    /// Looks up a key by its protocol name (case-insensitive) or number.
    public init?(name: String) {
        if let number = Int16(name), number >= 0 {
            self.init(rawValue: number)
            return
        }
        guard let match = Self.named.first(where: { $0.0.lowercased() == name.lowercased() }) else { return nil }
        self = match.1
    }

    public var description: String { Self.named.first { $0.1 == self }?.0 ?? "ApiKey(\(rawValue))" }
}

/// A Kafka or librdkafka error code, for fault injection.
public struct KafkaErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Looks up a code by its protocol name (`NOT_LEADER_FOR_PARTITION`, case-insensitive) or number.
    public init?(name: String) {
        if let number = Int32(name) {
            self.init(rawValue: number)
            return
        }
        var descriptions: UnsafePointer<rd_kafka_err_desc>?
        var count = 0
        rd_kafka_get_err_descs(&descriptions, &count)
        guard let descriptions else { return nil }
        for index in 0..<count {
            guard let entryName = descriptions[index].name else { continue }
            if String(cString: entryName).caseInsensitiveCompare(name) {
                self.init(rawValue: descriptions[index].code.rawValue)
                return
            }
        }
        return nil
    }

    public var description: String { String(cString: rd_kafka_err2name(rd_kafka_resp_err_t(rawValue))) }
}

extension String {
    fileprivate func caseInsensitiveCompare(_ other: String) -> Bool { lowercased() == other.lowercased() }
}
