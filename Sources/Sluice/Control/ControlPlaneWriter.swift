import Foundation
import Logging
import Metrics
import SluiceKafka
import Synchronization

/// Writes control records to a group's control topic, and an audit entry for each operator-visible change
/// (flags, quarantines, commands; not heartbeats or trips) to the group's audit topic.
public struct ControlPlaneWriter: Sendable {
    /// The control topic written to.
    public let topic: String
    /// The audit topic (`__sluice-audit-GROUP` beside `__sluice-control-GROUP`; else `CONTROL.audit`).
    public let auditTopic: String
    private let producer: KafkaProducer
    private let logger: Logger
    private let keys: ControlKeys?

    /// The topics a group's control plane keeps its records in, as they are created when missing: the control
    /// topic (one partition, compacted: the latest record of each key is the state) and its audit topic
    /// (time-retained history). Compacted soon after writing: hosts write their status every few seconds,
    /// and every host start and CLI call reads the topic from its beginning; the active segment is never
    /// compacted, so it rolls every 10 minutes instead of Kafka's default week.
    public static func topics(forControl topic: String, replicationFactor: Int = -1) -> [KafkaTopicAdmin.NewTopic] {
        [
            KafkaTopicAdmin.NewTopic(
                name: topic, replicationFactor: replicationFactor,
                config: ["cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"]),
            KafkaTopicAdmin.NewTopic(
                name: auditTopic(forControl: topic), replicationFactor: replicationFactor,
                config: ["cleanup.policy": "delete"]),
        ]
    }

    /// The audit topic kept beside a control topic.
    public static func auditTopic(forControl topic: String) -> String {
        let prefix = "__sluice-control-"
        return topic.hasPrefix(prefix) ? "__sluice-audit-" + topic.dropFirst(prefix.count) : topic + ".audit"
    }

    /// Asks for both topics' metadata before the first record (a new producer may otherwise wait a second
    /// for each topic's leader, see ``KafkaProducer/prepare(topics:timeout:)``).
    private func prepare() async {
        await producer.prepare(topics: [topic, auditTopic])
    }

    /// Writes one control record, signed as `signer` when the group's records are signed; returns its offset.
    private func write(_ record: (key: String, value: [UInt8]), as signer: ControlSigner) async throws -> Int64 {
        let headers = try keys?.sign(topic: topic, signer: signer, key: record.key, value: record.value) ?? []
        await prepare()
        return try await producer.send(
            ProducerRecord(
                topic: topic, partition: 0, key: Array(record.key.utf8), value: record.value, headers: headers)
        ).offset
    }

    /// Writes the audit entry of a change already made; a failure is logged, not thrown (the change stands).
    private func audit(
        _ subject: String, before: String?, after: String, who: String?, reason: String?, offset: Int64,
        signer: ControlSigner
    ) async {
        var entry = AuditEntry(
            atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), who: who, reason: reason, subject: subject,
            before: before, after: after,
            controlOffset: offset)
        entry.signer = keys == nil ? nil : signer
        do {
            let headers = (try? keys?.sign(topic: auditTopic, signer: signer, key: subject, value: entry.encoded)) ?? []
            _ = try await producer.send(
                ProducerRecord(
                    topic: auditTopic, partition: 0, key: Array(subject.utf8), value: entry.encoded, headers: headers))
        } catch {
            logger.warning(
                "the change was made but its audit entry could not be written",
                metadata: ["sluice.subject": "\(subject)", "error": "\(error)"])
        }
    }

    /// Creates a writer with its own producer; with `keys`, it signs what it writes (and refuses to write a
    /// record of a role it holds no key for).
    public init(
        bootstrapServers: String, topic: String, properties: [String: String] = [:], keys: ControlKeys? = nil,
        logger: Logger
    ) throws {
        self.keys = keys
        var configuration = KafkaProducerConfiguration(bootstrapServers: bootstrapServers)
        configuration.clientID = "sluice-control-writer"
        configuration.properties = properties
        self.topic = topic
        self.auditTopic = Self.auditTopic(forControl: topic)
        self.logger = logger
        producer = try KafkaProducer(configuration: configuration, logger: logger)
    }

    /// Sets a flag for the group (nil: unset it, so lower layers decide); returns the record's offset once
    /// the broker acknowledged it.
    ///
    /// With `audited` false, the caller writes the audit entry itself with ``auditFlag(_:enabled:rate:reason:who:before:offset:)``
    /// (the CLI writes first and learns the value before while the hosts already apply it).
    @discardableResult
    public func setFlag(
        _ key: FlagKey, enabled: Bool?, reason: String?, who: String?, rate: Double? = nil,
        before: FlagSetting?? = .none, audited: Bool = true
    ) async throws -> Int64 {
        let offset = try await write(
            ControlRecord.flag(key, enabled: rate != nil ? true : enabled, reason: reason, who: who, rate: rate)
                .encoded, as: .operator)
        if audited {
            await auditFlag(
                key, enabled: enabled, rate: rate, reason: reason, who: who, before: before.map { $0 }, offset: offset,
                knowsBefore: before != nil)
        }
        return offset
    }

    /// Writes the audit entry of a flag change made at control offset `offset`; `before` is the flag's
    /// control-plane value before it (nil: unset).
    public func auditFlag(
        _ key: FlagKey, enabled: Bool?, rate: Double?, reason: String?, who: String?, before: FlagSetting?,
        offset: Int64
    ) async {
        await auditFlag(
            key, enabled: enabled, rate: rate, reason: reason, who: who, before: before, offset: offset,
            knowsBefore: true)
    }

    private func auditFlag(
        _ key: FlagKey, enabled: Bool?, rate: Double?, reason: String?, who: String?, before: FlagSetting??,
        offset: Int64, knowsBefore: Bool
    ) async {
        let after = rate.map(ControlRecord.describeRate) ?? enabled.map { $0 ? "on" : "off" } ?? "unset"
        let previous =
            knowsBefore
            ? (before.flatMap { $0 }.map { $0.rate.map(ControlRecord.describeRate) ?? ($0.enabled ? "on" : "off") }
                ?? "unset") : nil
        await audit(
            "flag/\(key)", before: previous, after: after, who: who, reason: reason, offset: offset, signer: .operator)
    }

    /// Publishes a shard's trip (nil: cleared) for the group.
    func setTrip(_ topicPartition: TopicPartition, _ trip: ControlRecord.Trip?) async throws {
        _ = try await write(ControlRecord.trip(topicPartition, trip).encoded, as: .host)
    }

    /// Publishes a quarantine (nil: released) for the group; returns the record's offset. A host records
    /// quarantines and clears its suspects (`signer` host); an operator releases (the default for releases).
    @discardableResult
    public func setQuarantine(
        _ topicPartition: TopicPartition, _ quarantine: Quarantine?, before: Quarantine? = nil,
        signer: ControlSigner? = nil
    ) async throws -> Int64 {
        let record = ControlRecord.quarantine(topicPartition, quarantine).encoded
        let recordKey = record.key
        let signer = signer ?? (quarantine?.isRecordedByHost == true ? .host : .operator)
        let offset = try await write(record, as: signer)
        func describe(_ quarantine: Quarantine?) -> String {
            quarantine.map {
                "\($0.state.rawValue) at offset \($0.offset) (\($0.crashes) crash\($0.crashes == 1 ? "" : "es"), \($0.signal))"
            } ?? "released"
        }
        await audit(
            recordKey, before: before.map(describe), after: describe(quarantine),
            who: quarantine?.who ?? quarantine?.host, reason: quarantine?.reason,
            offset: offset, signer: signer)
        return offset
    }

    /// Sends a command to the group (carried out by the host that owns its shard); returns its offset.
    @discardableResult
    public func send(_ command: ControlCommand) async throws -> Int64 {
        let record = ControlRecord.command("\(UInt64.random(in: 0...UInt64.max))", command).encoded
        let offset = try await write(record, as: .operator)
        await audit(
            record.key, before: nil, after: "\(command.action.rawValue) \(command.topicPartition)", who: command.who,
            reason: nil, offset: offset,
            signer: .operator)
        return offset
    }

    /// Publishes this host's status (nil: it left the group).
    func setHost(_ identity: String, _ status: ControlHostStatus?) async throws {
        _ = try await write(ControlRecord.host(identity, status).encoded, as: .host)
    }

    /// Flushes and closes the producer.
    public func close() async { await producer.close() }
}
