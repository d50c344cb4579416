import Crdkafka
import Logging

/// Makes sure a topic Sluice keeps its own records in (a group's control and audit topics) exists, creating
/// it with librdkafka's admin API (CreateTopics) when it is missing.
///
/// A topic that exists is left as it is: its partition count is reported (Sluice reads and writes only its
/// partition 0, so more partitions waste nothing but are worth a warning). Two hosts that start together may
/// both try to create it; the loser's "already exists" is success.
public enum KafkaTopicAdmin {
    /// What ``ensure(_:bootstrapServers:properties:timeout:)`` found or did.
    public enum Outcome: Equatable, Sendable {
        /// The topic was there, with this many partitions.
        case existed(partitions: Int)
        /// It was created as asked.
        case created
        /// The brokers have no CreateTopics (librdkafka's mock cluster, which the embedded cluster and
        /// `sluice dev-broker` run, or Kafka before 0.10.1): the topic was asked for by name, which makes
        /// brokers that allow it create it with their defaults (the mock: 4 partitions). `reason` says why.
        case autoCreated(reason: String)
    }

    /// A topic to create when missing.
    public struct NewTopic: Sendable, Equatable {
        /// The topic's name.
        public var name: String
        /// Its partitions.
        public var partitions: Int
        /// Its replication factor; -1 takes the brokers' `default.replication.factor` (Kafka 2.4 and later).
        public var replicationFactor: Int
        /// Topic configuration, such as `cleanup.policy` = `compact`.
        public var config: [String: String]

        /// Describes a topic to create.
        public init(name: String, partitions: Int = 1, replicationFactor: Int = -1, config: [String: String] = [:]) {
            self.name = name
            self.partitions = partitions
            self.replicationFactor = replicationFactor
            self.config = config
        }
    }

    /// Creates `topic` unless the cluster has it. Runs its blocking librdkafka calls off the cooperative pool.
    /// Throws when the cluster cannot be asked or refuses the creation (for example for lack of ACLs), with
    /// librdkafka's reason and what to create by hand.
    public static func ensure(
        _ topic: NewTopic, bootstrapServers: String, properties: [String: String] = [:], timeout: Duration
    ) async throws(KafkaError) -> Outcome {
        try await withAdminClient(bootstrapServers: bootstrapServers, properties: properties) {
            handle throws(KafkaError) in
            try ensureBlocking(topic, handle: handle, timeout: timeout)
        }
    }

    /// Runs `body` with a short-lived client of the cluster (a producer handle, which joins no group), on a
    /// thread off the cooperative pool: librdkafka's admin and metadata calls block.
    static func withAdminClient<T: Sendable>(
        bootstrapServers: String, properties: [String: String], clientID: String = "sluice-topic-admin",
        _ body: @escaping @Sendable (RDKafkaHandle) throws(KafkaError) -> T
    ) async throws(KafkaError) -> T {
        do {
            return try await OwnerThread.blocking { () throws(KafkaError) -> T in
                let settings =
                    [("bootstrap.servers", bootstrapServers), ("client.id", clientID)]
                    + properties.sorted { $0.key < $1.key }.filter { key, _ in !key.hasPrefix("group.") }
                let handle = try RDKafkaHandle(
                    type: RD_KAFKA_PRODUCER, properties: settings, events: 0, logger: "admin client")
                // Run last: whatever `body` made from the client (queues, options) goes before it does.
                defer { withExtendedLifetime(handle) {} }
                return try body(handle)
            }
        } catch let error as KafkaError {
            throw error
        } catch {
            throw KafkaError(code: .librdkafka, message: "\(error)")
        }
    }

    /// The cluster id when `handle` talks to librdkafka's mock cluster (the embedded cluster, `sluice
    /// dev-broker`: it names itself `mockCluster…`), which answers no admin request (one would be waited for
    /// until its timeout) and auto-creates topics; nil for any other cluster.
    static func mockClusterID(_ handle: RDKafkaHandle, timeout: Duration) -> String? {
        guard let clusterID = rd_kafka_clusterid(handle.pointer, Int32(clamping: timeout.milliseconds)) else {
            return nil
        }
        defer { rd_kafka_mem_free(handle.pointer, clusterID) }
        let id = String(cString: clusterID)
        return id.hasPrefix("mockCluster") ? id : nil
    }

    private static func ensureBlocking(_ topic: NewTopic, handle: RDKafkaHandle, timeout: Duration) throws(KafkaError)
        -> Outcome
    {
        // The description first: a bad one is refused before the cluster is asked anything.
        var errorText = [CChar](repeating: 0, count: 512)
        func text() -> String {
            String(decoding: errorText.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        guard
            let newTopic = rd_kafka_NewTopic_new(
                topic.name, Int32(topic.partitions), Int32(topic.replicationFactor), &errorText, errorText.count)
        else { throw .configuration("topic '\(topic.name)': \(text())") }
        defer { rd_kafka_NewTopic_destroy(newTopic) }
        for (name, value) in topic.config.sorted(by: { $0.key < $1.key }) {
            let error = rd_kafka_NewTopic_set_config(newTopic, name, value)
            if error != RD_KAFKA_RESP_ERR_NO_ERROR {
                throw .rdkafka(error, context: "topic '\(topic.name)': config \(name)=\(value)")
            }
        }
        if try handle.topicExists(topic.name, timeout: timeout) {
            return .existed(partitions: try handle.partitionCount(topic: topic.name, timeout: timeout))
        }
        // The mock cluster has no CreateTopics: asking for the topic by name makes it create it.
        if let id = mockClusterID(handle, timeout: timeout) {
            _ = try handle.partitionCount(topic: topic.name, timeout: timeout)
            return .autoCreated(reason: "librdkafka's mock cluster (\(id)) has no CreateTopics")
        }
        return try adminRequest(
            handle, RD_KAFKA_ADMIN_OP_CREATETOPICS, timeout: timeout, operationTimeout: true,
            send: { options, queue in
                var topics: [OpaquePointer?] = [newTopic]
                rd_kafka_CreateTopics(handle.pointer, &topics, 1, options, queue)
            },
            answer: { event throws(KafkaError) in
                guard let event else {
                    throw KafkaError(
                        code: .timeout, message: "creating topic '\(topic.name)': no answer within \(timeout)")
                }
                return try created(topic, answer: event, handle: handle, timeout: timeout)
            })
    }

    /// What the answer to a CreateTopics request says.
    private static func created(
        _ topic: NewTopic, answer event: OpaquePointer, handle: RDKafkaHandle, timeout: Duration
    )
        throws(KafkaError) -> Outcome
    {
        let requestError = rd_kafka_event_error(event)
        if requestError == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE {
            let reason = String(cString: rd_kafka_event_error_string(event))
            _ = try handle.partitionCount(topic: topic.name, timeout: timeout)
            return .autoCreated(reason: reason)
        }
        if requestError != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(
                code: .librdkafka,
                message: "creating topic '\(topic.name)': \(String(cString: rd_kafka_event_error_string(event)))",
                librdkafkaCode: requestError.rawValue)
        }
        var count = 0
        guard let result = rd_kafka_event_CreateTopics_result(event),
            let results = rd_kafka_CreateTopics_result_topics(result, &count), count == 1, let topicResult = results[0]
        else {
            throw KafkaError(code: .librdkafka, message: "creating topic '\(topic.name)': the answer names no topic")
        }
        let error = rd_kafka_topic_result_error(topicResult)
        switch error {
        case RD_KAFKA_RESP_ERR_NO_ERROR:
            return .created
        case RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS:
            // Another host created it in the meantime.
            return .existed(partitions: try handle.partitionCount(topic: topic.name, timeout: timeout))
        default:
            let reason =
                rd_kafka_topic_result_error_string(topicResult).map { String(cString: $0) }
                ?? String(cString: rd_kafka_err2str(error))
            throw KafkaError(
                code: .librdkafka, message: "creating topic '\(topic.name)': \(reason)", librdkafkaCode: error.rawValue)
        }
    }
}

extension KafkaTopicAdmin {
    /// What ``configuration(of:bootstrapServers:properties:timeout:)`` learned of a topic's configuration.
    public enum Described: Equatable, Sendable {
        /// The topic's configuration entries, name to value.
        case entries([String: String])
        /// The brokers have no DescribeConfigs (librdkafka's mock cluster).
        case unsupported(reason: String)
        /// The brokers did not say (no answer in time, or a refusal such as a missing DescribeConfigs ACL).
        case unknown(reason: String)
    }

    /// A topic's configuration as the brokers report it (DescribeConfigs). Throws only when no client can be
    /// made; a broker that cannot or will not say is ``Described/unsupported(reason:)`` or
    /// ``Described/unknown(reason:)``.
    public static func configuration(
        of topic: String, bootstrapServers: String, properties: [String: String] = [:], timeout: Duration
    ) async throws(KafkaError) -> Described {
        try await withAdminClient(bootstrapServers: bootstrapServers, properties: properties) {
            handle throws(KafkaError) in
            try describeBlocking(topic, handle: handle, timeout: timeout)
        }
    }

    private static func describeBlocking(_ topic: String, handle: RDKafkaHandle, timeout: Duration) throws(KafkaError)
        -> Described
    {
        if let id = mockClusterID(handle, timeout: timeout) {
            return .unsupported(reason: "librdkafka's mock cluster (\(id)) has no DescribeConfigs")
        }
        guard let resource = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic) else {
            throw .configuration("topic '\(topic)': cannot describe its configuration")
        }
        defer { rd_kafka_ConfigResource_destroy(resource) }
        return try adminRequest(
            handle, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS, timeout: timeout,
            send: { options, queue in
                var resources: [OpaquePointer?] = [resource]
                rd_kafka_DescribeConfigs(handle.pointer, &resources, 1, options, queue)
            },
            answer: { event in
                guard let event else { return .unknown(reason: "no answer to DescribeConfigs within \(timeout)") }
                return described(answer: event)
            })
    }

    /// What the answer to a DescribeConfigs request of one topic says.
    private static func described(answer event: OpaquePointer) -> Described {
        let requestError = rd_kafka_event_error(event)
        guard requestError == RD_KAFKA_RESP_ERR_NO_ERROR else {
            return .unknown(reason: String(cString: rd_kafka_event_error_string(event)))
        }
        var count = 0
        guard let result = rd_kafka_event_DescribeConfigs_result(event),
            let described = rd_kafka_DescribeConfigs_result_resources(result, &count), count == 1,
            let topicResult = described[0]
        else { return .unknown(reason: "the answer names no topic") }
        let error = rd_kafka_ConfigResource_error(topicResult)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
            return .unknown(
                reason: rd_kafka_ConfigResource_error_string(topicResult).map { String(cString: $0) }
                    ?? String(cString: rd_kafka_err2str(error)))
        }
        var entryCount = 0
        var entries: [String: String] = [:]
        if let configs = rd_kafka_ConfigResource_configs(topicResult, &entryCount) {
            for index in 0..<entryCount {
                guard let entry = configs[index], let name = rd_kafka_ConfigEntry_name(entry) else { continue }
                entries[String(cString: name)] = rd_kafka_ConfigEntry_value(entry).map { String(cString: $0) } ?? ""
            }
        }
        return .entries(entries)
    }
}

extension KafkaTopicAdmin {
    /// One admin request: its options with `timeout` (as the operation's timeout too, with `operationTimeout`), a
    /// queue for its answer, `send` to make it, and `answer` to read the answer's event (nil when none came within
    /// the timeout and a second more for the request's own queueing); everything freed after.
    static func adminRequest<Result>(
        _ handle: RDKafkaHandle, _ operation: rd_kafka_admin_op_t, timeout: Duration, operationTimeout: Bool = false,
        send: (OpaquePointer?, OpaquePointer) -> Void, answer: (OpaquePointer?) throws(KafkaError) -> Result
    ) throws(KafkaError) -> Result {
        var errorText = [CChar](repeating: 0, count: 512)
        let milliseconds = Int32(clamping: timeout.milliseconds)
        let options = rd_kafka_AdminOptions_new(handle.pointer, operation)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_request_timeout(options, milliseconds, &errorText, errorText.count)
        if operationTimeout {
            _ = rd_kafka_AdminOptions_set_operation_timeout(options, milliseconds, &errorText, errorText.count)
        }
        guard let queue = rd_kafka_queue_new(handle.pointer) else { throw .state("rd_kafka_queue_new failed") }
        defer { rd_kafka_queue_destroy(queue) }
        send(options, queue)
        let event = rd_kafka_queue_poll(queue, milliseconds + 1000)
        defer { if let event { rd_kafka_event_destroy(event) } }
        return try answer(event)
    }
}
