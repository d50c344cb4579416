/// Configuration of a ``KafkaConsumer``.
///
/// Typed fields cover what Sluice itself relies on; anything else librdkafka understands goes in
/// ``properties`` and is validated by librdkafka when the consumer is created (a bad name or value
/// raises a ``KafkaError`` with code ``KafkaError/Code/configuration`` that names the property).
///
/// A few properties are owned by the consumer because its guarantees depend on them and may not be
/// overridden: `enable.auto.offset.store=false` (only completed work is stored),
/// `enable.auto.commit=false` (the consumer commits stored offsets itself, every
/// ``commitInterval`` and on revoke and close), `partition.assignment.strategy=cooperative-sticky`
/// and `enable.partition.eof=false`.
public struct KafkaConsumerConfiguration: Sendable {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    public var bootstrapServers: String
    /// `group.id`: the consumer group.
    public var groupID: String
    /// `client.id`. Default `sluice`.
    public var clientID: String = "sluice"
    /// `group.instance.id` (KIP-345, static membership): a member that rejoins with the same id within the
    /// session timeout gets its partitions back without a rebalance of the group. Nil: a dynamic member.
    public var groupInstanceID: String?
    /// Where to start in a partition with no committed offset. Default ``OffsetReset/earliest``.
    public var autoOffsetReset: OffsetReset = .earliest
    /// `session.timeout.ms`. Default 10 s. The embedded cluster needs more than 3 s.
    public var sessionTimeout: Duration = .seconds(10)
    /// How often stored offsets are committed asynchronously. Default 1 s.
    public var commitInterval: Duration = .seconds(1)
    /// How long a revoked partition may take to be released after the revocation event was delivered,
    /// if its owner does not call ``KafkaRevocation/done()`` first. Default 10 s.
    public var revokeTimeout: Duration = .seconds(10)
    /// The longest ``KafkaConsumer/close()`` makes its caller wait: for the consumer's first group join to
    /// complete (closing earlier aborts the process with librdkafka < 2.3.0), the final commit and the leave
    /// handshake. When it passes, `close()` returns with every sequence ended and the consumer finishes
    /// alone: one the group never answered is destroyed without the handshake; one in its first rebalance
    /// closes once that completes; one leaving is destroyed without the handshake `closeTimeout` after the
    /// handshake began (the group then notices after `session.timeout.ms`). Default 8 s.
    public var closeTimeout: Duration = .seconds(8)
    /// Most messages taken from a partition's librdkafka queue in one batch. Default 1,000.
    public var maxBatchSize: Int = 1000
    /// Messages a partition may hold in Sluice's buffer before the consumer pauses its fetching
    /// (flow control); fetching resumes when half of it has been taken. Default 4,000.
    public var partitionBufferMessages: Int = 4000
    /// Bytes all partitions' buffers may hold together (messages' ``ConsumedMessage/memoryFootprint``), split
    /// evenly across the assigned partitions: a partition over its share pauses fetching like one over
    /// ``partitionBufferMessages``; an empty buffer still takes one message larger than the share. nil (the
    /// default): only the message count bounds a buffer.
    public var partitionBufferBytes: Int?
    /// Raw librdkafka properties, applied after the defaults below and the typed fields.
    public var properties: [String: String] = [:]

    /// The librdkafka defaults Sluice chooses for throughput and latency with librdkafka 2.0.2.
    ///
    /// - `fetch.wait.max.ms=10`: the broker answers a fetch after at most 10 ms when no data is there;
    ///   librdkafka's 500 ms makes an idle partition's first message wait and makes the embedded
    ///   cluster crawl.
    /// - `fetch.error.backoff.ms=10`: after an empty fetch librdkafka waits this long (default 500 ms).
    /// - `queued.min.messages=20000`, `queued.max.messages.kbytes=16384`: per partition queue,
    ///   because each partition has its own queue. In 2.0.2, once a queue passes either threshold the
    ///   fetcher stops and only looks again when its broker thread wakes (up to 1 s later). The
    ///   consumer drains every partition queue into its own bounded buffer at once and pauses a
    ///   partition whose buffer is full, so these thresholds are not reached in steady state.
    /// - `fetch.message.max.bytes=1048576`: bytes per partition per fetch.
    public static let defaultProperties: [String: String] = [
        "fetch.wait.max.ms": "10",
        "fetch.error.backoff.ms": "10",
        "queued.min.messages": "20000",
        "queued.max.messages.kbytes": "16384",
        "fetch.message.max.bytes": "1048576",
        "topic.metadata.refresh.interval.ms": "10000",
    ]

    /// Properties the consumer owns and sets itself.
    static let ownedProperties: [String: String] = [
        "enable.auto.offset.store": "false",
        "enable.auto.commit": "false",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": "false",
    ]

    /// Creates a configuration.
    public init(bootstrapServers: String, groupID: String) {
        self.bootstrapServers = bootstrapServers
        self.groupID = groupID
    }

    /// Where to start reading a partition that has no committed offset.
    public enum OffsetReset: String, Sendable {
        /// The oldest message the broker still holds.
        case earliest
        /// Only messages produced from now on.
        case latest
    }

    /// Every librdkafka property the consumer will be created with, in application order.
    /// `followJoinState`: add librdkafka's `cgrp` debug context, whose join-state lines ``KafkaConsumer``
    /// reads (hazard `commit-during-join-loses-assignment`); only a consumer that serves its log queue asks.
    func librdkafkaProperties(followJoinState: Bool = false) throws(KafkaError) -> [(String, String)] {
        for key in properties.keys where Self.ownedProperties[key] != nil {
            throw .configuration(
                "property '\(key)' is set by the consumer itself (\(key)=\(Self.ownedProperties[key]!)) "
                    + "and cannot be overridden"
            )
        }
        guard maxBatchSize > 0 else { throw .configuration("maxBatchSize must be positive, got \(maxBatchSize)") }
        guard partitionBufferMessages > 1 else {
            throw .configuration("partitionBufferMessages must be at least 2, got \(partitionBufferMessages)")
        }
        if let partitionBufferBytes, partitionBufferBytes < 1 {
            throw .configuration("partitionBufferBytes must be positive, got \(partitionBufferBytes)")
        }
        var result: [(String, String)] = Self.defaultProperties.sorted { $0.key < $1.key }
        result += [
            ("bootstrap.servers", bootstrapServers),
            ("group.id", groupID),
            ("client.id", clientID),
        ]
        if let groupInstanceID { result.append(("group.instance.id", groupInstanceID)) }
        result += [
            ("auto.offset.reset", autoOffsetReset.rawValue),
            ("session.timeout.ms", String(sessionTimeout.milliseconds)),
        ]
        var own = properties
        if followJoinState, Self.followsJoinState {
            // The join state is visible only in librdkafka's cgrp debug log (see the hazard).
            let contexts = (own["debug"] ?? "").split(separator: ",").map { String($0.filter { !$0.isWhitespace }) }
            if !contexts.contains("cgrp"), !contexts.contains("all") {
                own["debug"] = (contexts.filter { !$0.isEmpty } + ["cgrp"]).joined(separator: ",")
            }
        }
        result += own.sorted { $0.key < $1.key }
        result += Self.ownedProperties.sorted { $0.key < $1.key }
        return result
    }

    /// Whether the consumer follows the group's join state to hold commits while the member joins.
    static var followsJoinState: Bool { Librdkafka.has("commit-during-join-loses-assignment") }

    /// Whether the user asked for librdkafka debug logs (the ones Sluice turns on for itself are not forwarded).
    var userWantsDebugLogs: Bool { (properties["debug"] ?? "").contains { !$0.isWhitespace } }
}
