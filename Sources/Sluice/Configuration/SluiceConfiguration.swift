import Foundation
import Logging
import SluiceKafka

/// Everything a ``SluiceHost`` needs: the Kafka connection, the topics and their pipelines, timeouts.
///
/// Build it in code, or load it from YAML with ``load(file:environment:)``.
public struct SluiceConfiguration: Sendable {
    /// The Kafka connection and group.
    public struct Kafka: Sendable, Hashable {
        /// `bootstrap.servers`.
        public var bootstrap: String
        /// The consumer group: every host of one service uses the same group.
        public var group: String
        /// `session.timeout.ms`. Default 10 s (the embedded cluster needs more than 3 s).
        public var sessionTimeout: Duration = .seconds(10)
        /// How often stored offsets are committed. Default 1 s.
        public var commitInterval: Duration = .seconds(1)
        /// Raw librdkafka properties for the consumer and producer, validated by librdkafka at start.
        public var properties: [String: String] = [:]
        /// `group.instance.id` (KIP-345, static membership; `kafka.groupInstanceId`): a host that restarts within
        /// the session timeout gets its partitions back without a rebalance of the group. Each host needs its
        /// own: on Kubernetes a StatefulSet's pod name (docs/configuration.md, "Static membership").
        /// Nil: a dynamic member (every join and leave rebalances the group).
        public var groupInstanceId: String?
        /// Raw librdkafka properties for the dead-letter producer only (`message.timeout.ms`, `acks`,
        /// `linger.ms`, ...), applied over the shared ones of ``properties``.
        public var producerProperties: [String: String] = [:]

        /// Creates the Kafka settings.
        public init(bootstrap: String, group: String) {
            self.bootstrap = bootstrap
            self.group = group
        }
    }

    /// Runtime flags (docs/architecture.md §8).
    public struct Flags: Sendable, Hashable {
        /// How often polled sources (the flag file) are read. Default 1 s.
        public var pollInterval: Duration = .seconds(1)
        /// Whether shards run when no flag covers them. Default on.
        public var defaultEnabled = true
        /// A flag file (YAML or JSON map from key to on/off), reloaded every poll interval.
        public var file: String?

        /// Creates the default flag settings.
        public init() {}
    }

    /// The group's control plane: flags kept in a compacted Kafka topic that every host of the group reads
    /// (docs/architecture.md §11).
    public struct Control: Sendable, Hashable {
        /// Whether hosts read the control topic. Default false.
        public var enabled = false
        /// The control topic; default `__sluice-control-GROUP`.
        public var topic: String?
        /// How long a starting host may take to read the control topic to its end before it gives up (it
        /// does not fetch without its control state). Default 30 s.
        public var loadTimeout: Duration = .seconds(30)
        /// Whether a starting host creates the control topic (one partition, compacted) and the audit topic
        /// when they are missing, with the admin API (CreateTopics). Default true; turn it off where hosts
        /// may not create topics and the topics are made by hand.
        public var createTopics = true
        /// The replication factor of topics the host creates; default -1, the brokers'
        /// `default.replication.factor` (Kafka 2.4 and later).
        public var replicationFactor = -1
        /// The group's host key (base64 of at least 32 random bytes): hosts sign their records with it (HMAC-SHA256)
        /// and accept host records only when signed with it or ``hostKeyPrevious``. With ``operatorPublicKey``,
        /// the group's records are signed; without both, they are not (anyone who can write to the control
        /// topic can then act as an operator, and the host warns at start).
        public var hostKey: String?
        /// The host key before a rotation, still accepted.
        public var hostKeyPrevious: String?
        /// The operators' Ed25519 public key (base64 of 32 bytes): flags, commands and releases must carry a
        /// signature that verifies with it or ``operatorPublicKeyPrevious``.
        public var operatorPublicKey: String?
        /// The operator public key before a rotation, still accepted.
        public var operatorPublicKeyPrevious: String?
        /// The operators' private key, only on a host whose admin API and dashboard write flags and releases
        /// for the group (that host can then act as an operator); the CLI takes it from SLUICE_CONTROL_OPERATOR_KEY.
        public var operatorKey: String?

        /// Creates the default control settings (off).
        public init() {}

        /// The keys that sign and verify the group's records; nil when none are configured (records unsigned).
        /// Throws naming the setting that is wrong, never its value.
        public func keys() throws(SluiceError) -> ControlKeys? {
            let given = [hostKey, operatorPublicKey].map { $0 != nil }
            guard given.contains(true) || operatorKey != nil else { return nil }
            guard given.allSatisfy({ $0 }) else {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "control.hostKey and control.operatorPublicKey go together: with one and not the other, some records would be accepted unsigned"
                )
            }
            return try ControlKeys(
                hostKeys: [hostKey, hostKeyPrevious].compactMap { $0 },
                operatorPublicKeys: [operatorPublicKey, operatorPublicKeyPrevious].compactMap { $0 },
                operatorPrivateKey: operatorKey)
        }
    }

    /// The admin HTTP API (served by `SluiceAdmin.AdminServer`).
    public struct Admin: Sendable, Hashable {
        /// Whether to serve it. Default true.
        public var enabled = true
        /// `HOST:PORT` to listen on. Default `127.0.0.1:8080` (loopback only); port 0 picks a free port.
        public var listen = "127.0.0.1:8080"
        /// When set, every change (PUT, DELETE, POST) needs `Authorization: Bearer <token>`.
        public var token: String?
        /// Where operator flag overrides are kept, so a restart keeps them. Default `sluice-admin-flags.json`.
        public var stateFile: String? = "sluice-admin-flags.json"
        /// Whether the dashboard's session cookie is `Secure` (sent over HTTPS only). Default false; it is also
        /// set for a request a TLS proxy forwarded (`X-Forwarded-Proto: https`).
        public var secureCookies = false
        /// Whether reads (`/v1/...`, the dashboard's pages, `/metrics`) are open to anyone who reaches the port.
        /// Default false: with a token, reads need it too (they show handler error texts and the group's layout).
        public var publicReads = false
        /// Whether `/metrics` alone is open (for a Prometheus that scrapes without a token, behind a network policy).
        public var publicMetrics = false
        /// Largest request body accepted. Default 16 KiB.
        public var maxBodyBytes = 16_384

        /// Creates the default admin settings.
        public init() {}
    }

    /// The Kafka connection and group.
    public var kafka: Kafka
    /// The admin HTTP API.
    public var admin = Admin()
    /// The group's control plane.
    public var control = Control()
    /// The librdkafka properties the control topic's reader and writers take: how to reach and authenticate
    /// to the brokers (security, SASL and OAUTHBEARER, TLS and its verification, DNS and sockets), nothing about
    /// consuming. Every client Sluice creates reaches the brokers the same way.
    public var controlProperties: [String: String] {
        kafka.properties.filter { key, _ in Self.connectionPropertyPrefixes.contains { key.hasPrefix($0) } }
    }

    /// Properties that say how to reach and authenticate to the brokers.
    static let connectionPropertyPrefixes = [
        "security.", "sasl.", "ssl.", "ssl_", "enable.ssl.", "enable.sasl.", "https.", "socket.", "client.dns.lookup",
        "broker.address.family", "resolve.canonical.bootstrap.servers.only",
    ]

    /// The control topic of this group.
    public var controlTopic: String { control.topic ?? ControlPlaneFlagSource.defaultTopic(group: kafka.group) }

    /// A writer of this group's control topic, signing with the configured keys.
    public func controlWriter(logger: Logger) throws -> ControlPlaneWriter {
        try ControlPlaneWriter(
            bootstrapServers: kafka.bootstrap, topic: controlTopic, properties: controlProperties, keys: control.keys(),
            logger: logger)
    }
    /// Runtime flags.
    public var flags = Flags()
    /// Per-topic pipeline settings; every topic needs a registered handler.
    public var topics: [String: TopicConfiguration]
    /// How long revoked shards may take to finish in-flight work before their partitions are released.
    /// Default 10 s.
    public var revokeTimeout: Duration = .seconds(10)
    /// How long a graceful shutdown may take to finish in-flight work before it commits and leaves. Default 30 s.
    public var shutdownTimeout: Duration = .seconds(30)
    /// The bytes of messages the host may hold (`host.memoryBudget`, default 256 MiB; nil: bounded by message
    /// counts only). Split as docs/performance.md's "Memory budget" says: half for the partitions' fetch
    /// buffers and a quarter for messages in flight in handlers, each divided evenly by the partitions
    /// assigned (a partition over its share pauses fetching, `flowControl`, or waits for room); a sixteenth
    /// (at least 1 MiB) is librdkafka's `queued.max.messages.kbytes`, which also caps its fetch responses
    /// (`fetch.max.bytes`). The rest is left for the runtime, librdkafka's own structures and the allocator.
    public var memoryBudget: Int? = 256 << 20
    /// The in-flight share of a partition is its buffer share divided by this (a quarter of the budget
    /// against a half).
    static let bufferToInFlightRatio = 2
    /// How long a stopping shard waits for its in-flight messages. Default 10 s.
    public var drainTimeout: Duration = .seconds(10)
    /// How long a running, unpaused shard with messages waiting may make no progress before it is reported
    /// stalled (`host.stallAfter`).
    public var stallAfter: Duration = .seconds(30)
    /// How often the high watermarks of every shard (paused ones included) and the committed offsets of shards
    /// that stored none yet are queried, for lag (`host.lagRefreshInterval`; one round trip per leader).
    public var lagRefreshInterval: Duration = .seconds(5)
    /// Threads that run handler code, kept free of blocked ones (`host.handlerThreads`). Default: the number
    /// of cores. Handlers run on Sluice's own threads, not Swift's cooperative pool, so a handler that blocks
    /// its thread cannot stop the watchdog, timers, flags or the admin API.
    public var handlerThreads: Int = SluiceConfiguration.coreCount
    /// The most handler threads, counting blocked ones (`host.maxHandlerThreads`). Default 64. When every
    /// one is blocked, handlers wait (and `handlerTimeout` crashes their shards).
    public var maxHandlerThreads = 64
    /// How long one handler may hold its thread without suspending before the thread counts as blocked: it
    /// is reported and another thread starts (`host.blockedThreadAfter`). Default 1 s.
    public var blockedThreadAfter: Duration = .seconds(1)
    /// Where the host keeps files that must survive a process restart (`host.stateDirectory`): the crash
    /// journal, and quarantines when the control plane is off. On Kubernetes, an `emptyDir` volume (it
    /// survives container restarts). Default `.sluice` under the working directory.
    public var stateDirectory: String = ".sluice"
    /// Whether shards report per-partition series (`metrics.perPartition`: `sluice_shard_lag`, `_lag_seconds`,
    /// `_attempt`, `_flag_enabled`, `_stalled` with a partition label). They multiply by partitions; topic
    /// totals (`sluice_topic_lag`, the counters) stay when off. Default on.
    public var perPartitionMetrics = true
    /// Worker processes (`host.workers`, default 0: the host is one process). With N ≥ 1 the process that runs
    /// the host supervises N worker processes of the same executable, each a member of the group with its own
    /// partitions; a trap then costs one worker's partitions, not the host (docs/architecture.md §14).
    public var workers = 0
    /// The most worker processes a host may have.
    public static let maximumWorkers = 64
    /// Whether the host keeps a crash journal and contains handlers that trap (`host.crashJournal`,
    /// docs/architecture.md §12). Default on.
    public var crashJournal = true
    /// The file the configuration was loaded from, for error messages; nil when built in code.
    public var sourceFile: String?

    /// Creates a configuration.
    /// Why a dead-letter topic that is also consumed is refused.
    static func deadLetterLoop(_ topic: String) -> String {
        "'\(topic)' is a consumed topic: its dead letters would be consumed and fail again, for ever"
    }

    /// A configuration with `kafka` and `topics`, every other setting at its default.
    public init(kafka: Kafka, topics: [String: TopicConfiguration]) {
        self.kafka = kafka
        self.topics = topics
    }

    func consumerConfiguration() -> KafkaConsumerConfiguration {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: kafka.bootstrap, groupID: kafka.group)
        configuration.sessionTimeout = kafka.sessionTimeout
        configuration.groupInstanceID = kafka.groupInstanceId
        configuration.commitInterval = kafka.commitInterval
        // The host releases revoked partitions itself once its shards drained; this is the backstop.
        configuration.revokeTimeout = revokeTimeout + .seconds(2)
        configuration.properties = kafka.properties
        if let memoryBudget {
            configuration.partitionBufferBytes = memoryBudget / 2
            if kafka.properties["queued.max.messages.kbytes"] == nil {
                configuration.properties["queued.max.messages.kbytes"] =
                    "\(Self.librdkafkaQueueKilobytes(memoryBudget: memoryBudget))"
            }
        }
        return configuration
    }

    /// librdkafka's `queued.max.messages.kbytes` for a memory budget: a sixteenth of it, at least 1 MiB.
    static func librdkafkaQueueKilobytes(memoryBudget: Int) -> Int { max(1024, memoryBudget / 16 / 1024) }

    func producerConfiguration() -> KafkaProducerConfiguration {
        var configuration = KafkaProducerConfiguration(bootstrapServers: kafka.bootstrap)
        configuration.clientID = "sluice-producer"
        // Consumer-only properties would be rejected by a producer; pass through how to reach the brokers (as
        // every client Sluice creates) and what any client understands.
        configuration.properties = kafka.properties.filter { entry in
            (Self.connectionPropertyPrefixes + Self.anyClientPropertyPrefixes).contains { entry.key.hasPrefix($0) }
        }
        configuration.properties.merge(kafka.producerProperties) { _, producer in producer }
        return configuration
    }

    static var coreCount: Int { max(ProcessInfo.processInfo.activeProcessorCount, 2) }

    /// Properties beyond the connection that a producer understands as well as a consumer.
    private static let anyClientPropertyPrefixes = ["client.", "broker.", "debug", "statistics."]
}
