import Foundation
import SluiceKafka

/// What one shard reports, in one shape for every reader: the admin API's `GET /v1/shards`, the `details` of a
/// host's record in the control topic (so other hosts' dashboards and `sluice shards` show it), the dashboard
/// and the CLI. Made from a ``ShardStatus`` at a moment; read back from JSON with every field checked against
/// ``InputLimits`` (another host's record, or an admin API answer, is input from outside the process).
public struct ShardReport: Codable, Sendable, Equatable {
    /// The shard's flag and where it came from.
    public struct Flag: Codable, Sendable, Equatable {
        public var enabled: Bool
        public var source: String
    }

    /// A message of the shard whose handler call killed a process, as a report shows it.
    public struct Quarantined: Codable, Sendable, Equatable {
        public var offset: Int64
        public var count: Int
        public var crashes: Int
        public var state: String
        public var signal: String
        public var host: String
        public var atMillis: Int64
        public var summary: String
        public var who: String?
        public var reason: String?
        public var report: String?
    }

    public var topic: String
    public var partition: Int32
    /// The state's name (`running`, `backingOff`, ...).
    public var state: String
    /// Why its partition is paused (`flag`, `breaker`, `flowControl`, ...), sorted.
    public var pauseReasons: [String] = []
    /// The breaker's attempt (0 while healthy).
    public var attempt = 0
    /// Messages in handler calls now.
    public var inFlight = 0
    /// Messages handled, failed (each retry counts), skipped and dead-lettered since the shard started here.
    public var processed = 0
    public var failed = 0
    public var skipped = 0
    public var deadLettered = 0
    /// Messages written to a retry topic (`onFailure: retryLater`); nil for none.
    public var retriedLater: Int?
    /// Its flag, on the host that owns it (left out of host records: flags are group-wide).
    public var flag: Flag?
    /// The last error, when there was one.
    public var lastError: String?
    /// The offset stored for commit (or, before it stored one, the group's committed offset).
    public var committedOffset: Int64?
    public var highWatermark: Int64?
    /// Messages behind the high watermark, when known.
    public var lag: Int64?
    /// How old the oldest message not yet done is.
    public var lagSeconds: Double?
    /// How long it has been stalled (running, messages waiting, no progress).
    public var stalledForSeconds: Double?
    /// Handler calls abandoned past their timeout and still running.
    public var abandonedCalls: Int?
    public var quarantine: Quarantined?
    /// Its flag's rate limit, in messages a second.
    public var rate: Double?
    /// The consumer's fetch position.
    public var position: Int64?
    /// Seconds until a backing-off shard starts again.
    public var restartInSeconds: Double?
    /// Why its breaker tripped.
    public var trippedReason: String?
    /// The worker process it runs in (`host.workers`), as the supervisor shows it.
    public var worker: Int?

    /// The shard of `topic` and `partition`, in `state`, with nothing else known.
    public init(topicPartition: TopicPartition, state: String) {
        topic = topicPartition.topic
        partition = topicPartition.partition
        self.state = state
    }

    /// The report of `status` at `now`.
    public init(_ status: ShardStatus, now: ContinuousClock.Instant = .now) {
        self.init(topicPartition: status.topicPartition, state: status.state.name)
        pauseReasons = status.pauseReasons.map(\.name).sorted()
        attempt = status.attempt
        inFlight = status.inFlight
        processed = status.processed
        failed = status.failed
        skipped = status.skipped
        deadLettered = status.deadLettered
        retriedLater = status.retriedLater > 0 ? status.retriedLater : nil
        flag = Flag(enabled: status.flag.enabled, source: status.flag.source)
        lastError = status.lastError
        committedOffset = status.storedOffset ?? status.committedOffset
        highWatermark = status.highWatermark
        lag = status.lag
        lagSeconds = status.lagSeconds
        stalledForSeconds = status.stalledSince.map { (now - $0).seconds }
        abandonedCalls = status.abandonedCalls > 0 ? status.abandonedCalls : nil
        quarantine = status.quarantine.map(Quarantined.init)
        rate = status.flag.rate
        position = status.position
        switch status.state {
        case .backingOff(_, let until): restartInSeconds = max(0, (until - now).seconds)
        case .tripped(_, let reason): trippedReason = reason
        default: break
        }
    }

    /// The shard's partition.
    public var topicPartition: TopicPartition { TopicPartition(topic, partition) }

    /// What a host writes of it in its record: the same report without what is the group's (flag, quarantine)
    /// and with the last error shortened, so a host of many shards keeps its record small.
    public var forHostRecord: ShardReport {
        var report = self
        report.flag = nil
        report.rate = nil
        report.quarantine = nil
        report.lastError = lastError.map { String($0.prefix(200)) }
        return report
    }

    /// Reads a report, every field checked: the shard's name, state and counts are required to be sane; a
    /// report from outside the process that is wrong anywhere is refused naming the field.
    public init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: CodingKeys.self)
        guard let topic = try fields.text(.topic, maxLength: 249), TopicName.problem(topic) == nil else {
            throw FieldRefused(.field, "'topic' must be a topic name")
        }
        let partition = try fields.requiredInteger(.partition, in: 0...Int64(Int32.max))
        self.init(
            topicPartition: TopicPartition(topic, Int32(partition)), state: try fields.text(.state, maxLength: 32) ?? ""
        )
        pauseReasons = try fields.texts(.pauseReasons, maxLength: 64, maxCount: 16) ?? []
        attempt = try fields.count(.attempt, in: InputLimits.counts) ?? 0
        inFlight = try fields.count(.inFlight, in: InputLimits.counts) ?? 0
        processed = try fields.count(.processed, in: InputLimits.counts) ?? 0
        failed = try fields.count(.failed, in: InputLimits.counts) ?? 0
        skipped = try fields.count(.skipped, in: InputLimits.counts) ?? 0
        deadLettered = try fields.count(.deadLettered, in: InputLimits.counts) ?? 0
        retriedLater = try fields.count(.retriedLater, in: InputLimits.counts)
        flag = try fields.nested(Flag.self, .flag)
        lastError = try fields.text(.lastError, maxLength: InputLimits.textLength)
        committedOffset = try fields.integer(.committedOffset, in: InputLimits.offsets)
        highWatermark = try fields.integer(.highWatermark, in: InputLimits.offsets)
        lag = try fields.integer(.lag, in: InputLimits.offsets)
        lagSeconds = try fields.number(.lagSeconds, in: InputLimits.seconds)
        stalledForSeconds = try fields.number(.stalledForSeconds, in: InputLimits.seconds)
        abandonedCalls = try fields.count(.abandonedCalls, in: InputLimits.counts)
        quarantine = try fields.nested(Quarantined.self, .quarantine)
        rate = try fields.number(.rate, in: 0...1_000_000)
        position = try fields.integer(.position, in: InputLimits.offsets)
        restartInSeconds = try fields.number(.restartInSeconds, in: InputLimits.seconds)
        trippedReason = try fields.text(.trippedReason, maxLength: InputLimits.textLength)
        worker = try fields.count(.worker, in: 0...Int64(SluiceConfiguration.maximumWorkers - 1))
    }
}

extension ShardReport.Flag {
    public init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: CodingKeys.self)
        enabled = try fields.boolean(.enabled) ?? true
        source = try fields.text(.source, maxLength: InputLimits.identityLength) ?? "?"
    }
}

extension ShardReport.Quarantined {
    init(_ quarantine: Quarantine) {
        self.init(
            offset: quarantine.offset, count: quarantine.count, crashes: quarantine.crashes,
            state: quarantine.state.rawValue, signal: quarantine.signal, host: quarantine.host,
            atMillis: quarantine.atMilliseconds, summary: quarantine.summary, who: quarantine.who,
            reason: quarantine.reason, report: quarantine.report)
    }

    public init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: CodingKeys.self)
        offset = try fields.requiredInteger(.offset, in: InputLimits.offsets)
        count = try fields.count(.count, in: InputLimits.quarantineSpan) ?? 1
        crashes = try fields.count(.crashes, in: InputLimits.counts) ?? 1
        state = try fields.text(.state, maxLength: 32) ?? "?"
        signal = try fields.text(.signal, maxLength: InputLimits.identityLength) ?? "?"
        host = try fields.text(.host, maxLength: InputLimits.identityLength) ?? "?"
        atMillis = try fields.integer(.atMillis, in: InputLimits.epochMilliseconds) ?? 0
        summary = try fields.text(.summary, maxLength: InputLimits.textLength) ?? ""
        who = try fields.text(.who, maxLength: InputLimits.identityLength)
        reason = try fields.text(.reason, maxLength: InputLimits.textLength)
        report = try fields.text(.report, maxLength: InputLimits.reportLength)
    }
}
