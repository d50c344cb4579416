import SluiceKafka

/// What a flag applies to: every shard (`*`), a topic (`orders`), or one partition (`orders/3`).
public struct FlagKey: Hashable, Sendable, CustomStringConvertible, Comparable {
    enum Scope: Hashable, Sendable {
        case all
        case topic(String)
        case partition(TopicPartition)
    }

    let scope: Scope

    /// Every shard.
    public static let all = FlagKey(scope: .all)
    /// One topic.
    public static func topic(_ name: String) -> FlagKey { FlagKey(scope: .topic(name)) }
    /// One partition.
    public static func partition(_ topicPartition: TopicPartition) -> FlagKey {
        FlagKey(scope: .partition(topicPartition))
    }

    /// Parses `*`, `TOPIC` or `TOPIC/PARTITION`. The topic must be a Kafka topic name (letters, digits, `.`,
    /// `_`, `-`; at most 249 characters; not `.` or `..`) and the partition a number in 0...2147483647.
    public init(parsing text: String) throws {
        let trimmed = text.trimmingWhitespace()
        if trimmed == "*" {
            scope = .all
            return
        }
        guard !trimmed.isEmpty else { throw SluiceError(code: .configuration, message: "a flag key cannot be empty") }
        func invalid(_ reason: String) -> SluiceError {
            SluiceError(code: .configuration, message: "flag key \(TopicName.quoted(text)): \(reason)")
        }
        var topic = trimmed
        var partition: Int32?
        if let slash = trimmed.lastIndex(of: "/") {
            topic = String(trimmed[..<slash])
            guard let number = Int32(trimmed[trimmed.index(after: slash)...]), number >= 0 else {
                throw invalid("the partition must be a number in 0...\(Int32.max)")
            }
            partition = number
        }
        if let problem = TopicName.problem(topic) { throw invalid(problem) }
        scope = partition.map { .partition(TopicPartition(topic, $0)) } ?? .topic(topic)
    }

    private init(scope: Scope) { self.scope = scope }

    /// The keys that apply to a partition, most specific first.
    static func keys(for topicPartition: TopicPartition) -> [FlagKey] {
        [.partition(topicPartition), .topic(topicPartition.topic), .all]
    }

    /// Whether a flag with this key applies to `topicPartition`.
    public func covers(_ topicPartition: TopicPartition) -> Bool { Self.keys(for: topicPartition).contains(self) }

    public var description: String {
        switch scope {
        case .all: "*"
        case .topic(let topic): topic
        case .partition(let topicPartition): topicPartition.description
        }
    }

    public static func < (lhs: FlagKey, rhs: FlagKey) -> Bool { lhs.description < rhs.description }
}

/// A flag's value with where it came from.
public struct FlagSetting: Sendable, Hashable {
    /// Whether the shards it covers run.
    public var enabled: Bool
    /// The source that set it (`file`, `admin`, `default`).
    public var source: String
    /// Why, when the source says (an admin reason).
    public var reason: String?
    /// A rate limit for the shards it covers, in messages a second (a rate flag such as `200/s`: the topic is
    /// slowed, not stopped); nil for no limit.
    public var rate: Double?
    /// Who set it, when the source keeps it (the control plane does: an operator, a CLI user, a dashboard login).
    public var who: String?

    /// Reads a flag value as flag files and flag services write it: `on` / `off` (or `true` / `false`), or a
    /// rate such as `200/s`; nil for anything else.
    public init?(parsing value: String, source: String) {
        let text = value.lowercased()
        if let rate = ControlRecord.parseRate(text) {
            self.init(enabled: true, source: source, rate: rate)
        } else if let enabled = ["on": true, "true": true, "off": false, "false": false][text] {
            self.init(enabled: enabled, source: source)
        } else {
            return nil
        }
    }

    /// Creates a setting.
    public init(enabled: Bool, source: String, reason: String? = nil, rate: Double? = nil, who: String? = nil) {
        self.enabled = enabled
        self.source = source
        self.reason = reason
        self.rate = rate
        self.who = who
    }
}
