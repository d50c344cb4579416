import Logging
import Metrics
import SluiceKafka
import Synchronization

import Foundation

/// One record of a group's control topic (docs/architecture.md §11): a key naming what it sets and a versioned JSON
/// value. Flags: key `flag/KEY` (`flag/orders`, `flag/orders/3`, `flag/*`), value
/// `{"v":1,"state":"off","reason":"...","who":"...","at":"..."}`; `"state":"unset"` removes the flag (unset
/// is an explicit value, so compaction keeps it).
///
/// Trips: key `trip/TOPIC/PARTITION`, value `{"v":1,"state":"tripped","offset":N,"reason":"..."}` while the
/// shard's breaker holds it, `{"v":1,"state":"clear"}` once a reset, a flag cycle or a probe released it. A
/// host assigned the partition starts it tripped, so a crash loop does not start again on a new owner.
public enum ControlRecord: Equatable, Sendable {
    case flag(FlagKey, enabled: Bool?, reason: String?, who: String?, rate: Double? = nil)
    case trip(TopicPartition, Trip?)
    /// A host's status: the control records it applied, when it last said so; nil once it left.
    case host(String, ControlHostStatus?)
    /// A message whose handler call killed a process (docs/architecture.md §12); nil once released (`"state":"released"`).
    case quarantine(TopicPartition, Quarantine?)
    /// An operator command (key `command/ID`), carried out by the host that owns its shard when it reads it
    /// while tailing (commands older than a host's start are history to it). Nil: a tombstone.
    case command(String, ControlCommand?)

    /// A shard held by its breaker, group-wide.
    public struct Trip: Equatable, Sendable {
        /// The offset it stopped at, when known.
        public var offset: Int64?
        /// Why it tripped.
        public var reason: String

        /// Creates a trip record's content.
        public init(offset: Int64?, reason: String) {
            self.offset = offset
            self.reason = reason
        }
    }

    /// The schema version this host reads and writes.
    public static let version = 1

    /// Reads a record; throws naming the key, the offset and what is wrong. Every field is checked against
    /// ``InputLimits`` before anything is computed from it: a record from outside the process is untrusted.
    /// Keys of kinds this version does not act on yet return nil.
    public static func parse(key: String, value: [UInt8]?, offset: Int64) throws(ControlRecordRejected) -> ControlRecord? {
        do {
            return try parseChecked(key: key, value: value, offset: offset)
        } catch let rejected as ControlRecordRejected {
            throw rejected
        } catch {
            throw ControlRecordRejected(key: key, offset: offset, reason: .format, detail: "\(error)")
        }
    }

    private static func parseChecked(key: String, value: [UInt8]?, offset: Int64) throws -> ControlRecord? {
        func bad(_ reason: ControlRecordRejected.Reason, _ detail: String) -> ControlRecordRejected {
            ControlRecordRejected(key: key, offset: offset, reason: reason, detail: detail)
        }
        func fields(_ value: [UInt8], keeps what: String) throws -> JSONFields {
            try versioned(value, keeps: what, bad: bad)
        }
        if key.hasPrefix("trip/") {
            let topicPartition = try partitionKey(key, kind: "trip", bad: bad)
            guard let value else { return .trip(topicPartition, nil) }
            let object = try fields(value, keeps: "the shard")
            switch try object.string("state", maxLength: 16) {
            case "tripped":
                let reason = try object.string("reason", maxLength: InputLimits.textLength) ?? "tripped"
                return .trip(topicPartition, Trip(offset: try object.int64("offset", in: InputLimits.offsets), reason: reason))
            case "clear":
                return .trip(topicPartition, nil)
            case let other:
                throw bad(.field, "state must be tripped or clear, got \(other.map { "'\($0)'" } ?? "none")")
            }
        }
        if key.hasPrefix("command/") {
            let identifier = String(key.dropFirst("command/".count))
            guard !identifier.isEmpty, identifier.count <= InputLimits.identityLength else { throw bad(.key, "a command key is command/ID") }
            guard let value else { return .command(identifier, nil) }
            let object = try fields(value, keeps: "nothing")
            let action = try object.string("action", maxLength: 16)
            guard action == "reset" else { throw bad(.field, "action must be reset, got \(action.map { "'\($0)'" } ?? "none")") }
            guard let shard = try object.string("shard", maxLength: InputLimits.identityLength), let topicPartition = TopicPartition(parsing: shard) else {
                throw bad(.field, "a reset names its shard as TOPIC/PARTITION")
            }
            let who = try object.string("who", maxLength: InputLimits.identityLength)
            return .command(identifier, ControlCommand(action: .reset, topicPartition: topicPartition, who: who))
        }
        if key.hasPrefix("quarantine/") {
            let topicPartition = try partitionKey(key, kind: "quarantine", bad: bad)
            guard let value else { return .quarantine(topicPartition, nil) }
            let object = try fields(value, keeps: "the shard")
            if object.object["state"] as? String == "released" { return .quarantine(topicPartition, nil) }
            return .quarantine(topicPartition, try Quarantine(fields: object, bad: bad))
        }
        if key.hasPrefix("host/") {
            let identity = String(key.dropFirst("host/".count))
            guard !identity.isEmpty, identity.count <= InputLimits.identityLength else { throw bad(.key, "a host key is host/ID") }
            guard let value else { return .host(identity, nil) }
            let object = try fields(value, keeps: "the host")
            if object.object["state"] as? String == "gone" { return .host(identity, nil) }
            return .host(identity, try ControlHostStatus(fields: object, bad: bad))
        }
        guard key.hasPrefix("flag/") else { return nil }
        let flagKey: FlagKey
        do {
            flagKey = try FlagKey(parsing: String(key.dropFirst("flag/".count)))
        } catch {
            throw bad(.key, "\((error as? SluiceError)?.message ?? "\(error)")")
        }
        guard let value else { return .flag(flagKey, enabled: nil, reason: nil, who: nil) }
        let object = try fields(value, keeps: "the flag")
        let reason = try object.string("reason", maxLength: InputLimits.textLength)
        let who = try object.string("who", maxLength: InputLimits.identityLength)
        switch try object.string("state", maxLength: 32) {
        case "on": return .flag(flagKey, enabled: true, reason: reason, who: who)
        case "off": return .flag(flagKey, enabled: false, reason: reason, who: who)
        case "unset": return .flag(flagKey, enabled: nil, reason: reason, who: who)
        case let state? where parseRate(state) != nil:
            return .flag(flagKey, enabled: true, reason: reason, who: who, rate: parseRate(state))
        case let other: throw bad(.field, "state must be on, off, unset or a rate such as 200/s, got \(other.map { "'\($0)'" } ?? "none")")
        }
    }

    private static func json(_ object: [String: Any]) -> Data {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
    }

    /// What a flag change does to a shard in `state` (its state's name), for dry runs: `enabled` nil and
    /// `rate` nil is an unset. The second value says whether the shard changes at all.
    public static func flagEffect(on state: String, enabled: Bool?, rate: Double?) -> (effect: String, changes: Bool) {
        let off = state == "off" || state == "stopped"
        switch (enabled, rate) {
        case (_, let rate?):
            return (off ? "start, slowed to \(describeRate(rate)), unless another flag keeps it off" : "slow to \(describeRate(rate))", true)
        case (false?, _):
            return off ? ("stay off", false) : ("drain, commit and stop", true)
        case (true?, _):
            return off ? ("start, unless another flag keeps it off", true) : ("keep running", false)
        case (nil, nil):
            return off ? ("start, unless another layer keeps it off", true) : ("keep running, unless another layer stops it", true)
        }
    }

    /// A rate written `N/s` (N from 0.001, one message in about 17 minutes, to a million), in messages a second.
    public static func parseRate(_ text: String) -> Double? {
        guard text.hasSuffix("/s"), text.count <= 32, let rate = Double(text.dropLast(2)), rate.isFinite, rate >= 0.001, rate <= 1_000_000 else {
            return nil
        }
        return rate
    }

    /// A rate as records and flags write it.
    public static func describeRate(_ rate: Double) -> String {
        rate == rate.rounded() ? "\(Int(rate))/s" : "\(rate)/s"
    }

    /// The JSON object of a value in the schema version this host reads.
    private static func versioned(
        _ value: [UInt8], keeps what: String, bad: @escaping (ControlRecordRejected.Reason, String) -> ControlRecordRejected
    ) throws -> JSONFields {
        guard let object = JSONFields.object(value) else { throw bad(.format, "the value is not a JSON object") }
        let fields = JSONFields(object) { bad($0, $1) }
        guard let version = try fields.int64("v", in: 0...Int64(Int32.max)) else { throw bad(.format, "no schema version 'v'") }
        guard version == Self.version else {
            throw bad(.format, "schema version \(version) is not understood (this host reads \(Self.version)); \(what) keeps its previous state")
        }
        return fields
    }

    /// The partition of a `KIND/TOPIC/PARTITION` key.
    private static func partitionKey(
        _ key: String, kind: String, bad: (ControlRecordRejected.Reason, String) -> ControlRecordRejected
    ) throws -> TopicPartition {
        let parts = key.dropFirst(kind.count + 1).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, TopicName.problem(String(parts[0])) == nil, let partition = Int32(parts[1]), partition >= 0 else {
            throw bad(.key, "a \(kind) key is \(kind)/TOPIC/PARTITION")
        }
        return TopicPartition(String(parts[0]), partition)
    }

    /// The record's key and value.
    public var encoded: (key: String, value: [UInt8]) {
        switch self {
        case .command(let identifier, let command):
            guard let command else { return ("command/\(identifier)", []) }
            var object: [String: Any] = [
                "v": Self.version, "action": command.action.rawValue, "shard": command.topicPartition.description, "at": Date().formatted(.iso8601),
            ]
            if let who = command.who { object["who"] = who }
            return ("command/\(identifier)", Array(Self.json(object)))
        case .quarantine(let topicPartition, let quarantine):
            var object = quarantine?.object() ?? ["v": Self.version, "state": "released"]
            object["at"] = Date().formatted(.iso8601)
            return ("quarantine/\(topicPartition.topic)/\(topicPartition.partition)", Array(Self.json(object)))
        case .host(let identity, let status):
            var object: [String: Any] = ["v": Self.version]
            if let status {
                object.merge(status.object()) { _, new in new }
            } else {
                object["state"] = "gone"
            }
            let data = Self.json(object)
            return ("host/\(identity)", Array(data))
        case .trip(let topicPartition, let trip):
            var object: [String: Any] = ["v": Self.version, "state": trip == nil ? "clear" : "tripped", "at": Date().formatted(.iso8601)]
            if let trip {
                object["reason"] = trip.reason
                if let offset = trip.offset { object["offset"] = offset }
            }
            let data = Self.json(object)
            return ("trip/\(topicPartition.topic)/\(topicPartition.partition)", Array(data))
        case .flag(let flagKey, let enabled, let reason, let who, let rate):
            var object: [String: Any] = [
                "v": Self.version,
                "state": rate.map(Self.describeRate) ?? enabled.map { $0 ? "on" : "off" } ?? "unset",
                "at": Date().formatted(.iso8601),
            ]
            if let reason { object["reason"] = reason }
            if let who { object["who"] = who }
            let data = Self.json(object)
            return ("flag/\(flagKey)", Array(data))
        }
    }
}

/// An operator command in the control topic.
public struct ControlCommand: Equatable, Sendable {
    /// What the command does.
    public enum Action: String, Sendable {
        /// A tripped or backing-off shard starts now with a clean history (the admin API's reset, group-wide).
        case reset
    }

    /// What to do.
    public var action: Action
    /// The shard it applies to.
    public var topicPartition: TopicPartition
    /// The operator, kept with the record.
    public var who: String?

    /// Creates a command.
    public init(action: Action, topicPartition: TopicPartition, who: String?) {
        self.action = action
        self.topicPartition = topicPartition
        self.who = who
    }
}

/// What a host of the group says of itself in the control topic (`host/ID`).
public struct ControlHostStatus: Equatable, Sendable {
    /// One owned shard as its host last reported it.
    public struct Shard: Equatable, Sendable {
        /// Why its partition is paused (`flag`, `tripped`, `flowControl`, ...), sorted.
        public var pauseReasons: [String] = []
        /// Messages behind the high watermark, when known.
        public var lag: Int64?
        /// The committed offset, when known.
        public var committed: Int64?
        /// The partition's high watermark, when known.
        public var highWatermark: Int64?
        /// Messages in handler calls now.
        public var inFlight = 0
        /// Messages handled, failed and dead-lettered since the shard started on this host.
        public var processed = 0
        public var failed = 0
        public var deadLettered = 0
        /// The breaker's attempt (0 while healthy).
        public var attempt = 0
        /// The last error, shortened.
        public var lastError: String?
        /// Seconds until a backing-off shard's next start, when it backs off.
        public var nextProbeSeconds: Double?

        /// Creates a shard report.
        public init() {}
    }

    /// Every control record before this offset is applied on the host.
    public var applied: Int64
    /// When the host wrote this, in milliseconds since the epoch (hosts write every few seconds).
    public var atMilliseconds: Int64
    /// The shards it owns (`topic/partition`) and their states.
    public var shards: [String: String]
    /// The same shards in more detail (pause reasons, lag, counts), refreshed with every heartbeat.
    public var details: [String: Shard] = [:]
    /// When the host process started, in milliseconds since the epoch.
    public var startedAtMilliseconds: Int64?
    /// Shard crashes and restarts on the host since it started.
    public var shardCrashes = 0
    public var shardRestarts = 0

    /// Creates a host status.
    public init(applied: Int64, atMilliseconds: Int64, shards: [String: String], details: [String: Shard] = [:], startedAtMilliseconds: Int64? = nil) {
        self.applied = applied
        self.atMilliseconds = atMilliseconds
        self.shards = shards
        self.details = details
        self.startedAtMilliseconds = startedAtMilliseconds
    }

    /// Whether the host wrote this within `window` milliseconds before `now` (ms since the epoch). A record
    /// dated more than a minute ahead of `now` is not live: clocks differ by less, and a forged far-future
    /// heartbeat must not keep a host that is gone counted as live.
    public func isLive(now: Int64, window: Int64) -> Bool {
        let age = now.milliseconds(since: atMilliseconds)
        return age >= -60_000 && age <= window
    }

    /// Seconds since the host wrote this (0 for a time ahead of `now`).
    public func ageSeconds(now: Int64) -> Int64 { max(0, now.milliseconds(since: atMilliseconds) / 1000) }

    /// Seconds since the host process started, when it said.
    public func upSeconds(now: Int64) -> Int64? { startedAtMilliseconds.map { max(0, now.milliseconds(since: $0) / 1000) } }

    func object() -> [String: Any] {
        var object: [String: Any] = ["applied": applied, "atMillis": atMilliseconds, "shards": shards]
        if let startedAtMilliseconds { object["startedAtMillis"] = startedAtMilliseconds }
        object["shardCrashes"] = shardCrashes
        object["shardRestarts"] = shardRestarts
        if !details.isEmpty {
            object["details"] = details.mapValues { shard -> [String: Any] in
                var entry: [String: Any] = [
                    "pauseReasons": shard.pauseReasons, "inFlight": shard.inFlight, "processed": shard.processed, "failed": shard.failed,
                    "deadLettered": shard.deadLettered, "attempt": shard.attempt,
                ]
                if let lag = shard.lag { entry["lag"] = lag }
                if let committed = shard.committed { entry["committed"] = committed }
                if let highWatermark = shard.highWatermark { entry["highWatermark"] = highWatermark }
                if let lastError = shard.lastError { entry["lastError"] = lastError }
                if let next = shard.nextProbeSeconds { entry["nextProbeSeconds"] = next }
                return entry
            }
        }
        return object
    }

    /// Reads a host record's fields, each checked against ``InputLimits``: `applied`, `atMillis` and the shard
    /// table are state and refused when wrong; the details are a report, and a detail that cannot be read is left out.
    init(fields: JSONFields, bad: @escaping (ControlRecordRejected.Reason, String) -> ControlRecordRejected) throws {
        let applied = try fields.requiredInt64("applied", in: InputLimits.offsets)
        let at = try fields.requiredInt64("atMillis", in: InputLimits.epochMilliseconds)
        var shards: [String: String] = [:]
        if let table = try fields.object("shards") {
            guard table.count <= InputLimits.shardsPerHost else { throw bad(.range, "'shards' has more than \(InputLimits.shardsPerHost) entries") }
            for (key, value) in table {
                guard key.count <= InputLimits.identityLength, let state = value as? String, state.count <= 32 else {
                    throw bad(.field, "'shards' maps TOPIC/PARTITION to a state name")
                }
                shards[key] = state
            }
        }
        self.init(applied: applied, atMilliseconds: at, shards: shards)
        startedAtMilliseconds = try fields.int64("startedAtMillis", in: InputLimits.epochMilliseconds)
        shardCrashes = try fields.int("shardCrashes", in: InputLimits.counts) ?? 0
        shardRestarts = try fields.int("shardRestarts", in: InputLimits.counts) ?? 0
        let details = try fields.object("details") ?? [:]
        guard details.count <= InputLimits.shardsPerHost else { throw bad(.range, "'details' has more than \(InputLimits.shardsPerHost) entries") }
        for (key, value) in details {
            guard let entry = value as? [String: Any] else { continue }
            let detail = JSONFields(entry) { bad($0, $1) }
            var shard = Shard()
            shard.pauseReasons = (try? detail.strings("pauseReasons", maxLength: 64, maxCount: 16)) ?? []
            shard.lag = try? detail.int64("lag", in: InputLimits.offsets)
            shard.committed = try? detail.int64("committed", in: InputLimits.offsets)
            shard.highWatermark = try? detail.int64("highWatermark", in: InputLimits.offsets)
            shard.inFlight = (try? detail.int("inFlight", in: InputLimits.counts)) ?? 0
            shard.processed = (try? detail.int("processed", in: InputLimits.counts)) ?? 0
            shard.failed = (try? detail.int("failed", in: InputLimits.counts)) ?? 0
            shard.deadLettered = (try? detail.int("deadLettered", in: InputLimits.counts)) ?? 0
            shard.attempt = (try? detail.int("attempt", in: InputLimits.counts)) ?? 0
            shard.lastError = try? detail.string("lastError", maxLength: InputLimits.textLength)
            shard.nextProbeSeconds = try? detail.double("nextProbeSeconds", in: InputLimits.seconds)
            self.details[key] = shard
        }
    }
}

/// The control plane's flags as a flag source: the group's control topic, read to its end before the host
/// fetches anything and then tailed, pushing each change at once. Bad records are logged, counted and
/// skipped; the flags they would have changed keep their state.
public final class ControlPlaneFlagSource: FlagSource {
    /// The source's name in flag settings and errors: `control`.
    public let name = "control"
    /// The control topic.
    public let topic: String
    private final class Table: Sendable {
        let flags = Mutex<[FlagKey: FlagSetting]>([:])
        let trips = Mutex<[TopicPartition: ControlRecord.Trip]>([:])
        let hosts = Mutex<[String: ControlHostStatus]>([:])
        let quarantines = Mutex<[TopicPartition: Quarantine]>([:])
        /// Commands read, with their offsets (the latest 1,000).
        let commands = Mutex<[(offset: Int64, command: ControlCommand)]>([])
        /// The position when the flag resolver last loaded the flags: the host's supervisor has those.
        let loadedPosition = Mutex<Int64>(0)
        /// Times the topic was found recreated.
        let recreations = Atomic<Int>(0)

        /// Drops everything read from a control topic that was deleted and created again: the new topic is
        /// read from its beginning into empty tables.
        func clear() {
            flags.withLock { $0.removeAll() }
            trips.withLock { $0.removeAll() }
            hosts.withLock { $0.removeAll() }
            quarantines.withLock { $0.removeAll() }
            commands.withLock { $0.removeAll() }
            loadedPosition.withLock { $0 = 0 }
        }
    }

    private let table = Table()
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    private let reader: ControlTopicReader
    private let rejections: ControlRejections
    /// What ``waitUntilApplied(_:timeout:)`` polls on: real time (a host hands in its own clock).
    private let clock: any HostClock

    /// The default control topic of a group.
    public static func defaultTopic(group: String) -> String { "__sluice-control-\(group)" }

    /// Whether this group's records must be signed (keys are configured).
    public let verifies: Bool

    /// Creates the source; nothing is read before ``load(timeout:)``. With `keys`, a record is applied only
    /// when signed by a role that may write it (``ControlKeys``); without, every well-formed record is.
    /// `clock`: real time, on which waits for records to be applied are timed (a host hands in its own).
    public init(
        bootstrapServers: String, topic: String, properties: [String: String] = [:], keys: ControlKeys? = nil,
        clock: any HostClock = SystemHostClock(name: "sluice-control-timers"), logger: Logger
    ) throws {
        self.topic = topic
        self.clock = clock
        self.verifies = keys != nil
        (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let table = self.table
        let continuation = self.continuation
        let rejections = ControlRejections(topic: topic, logger: logger)
        self.rejections = rejections
        reader = try ControlTopicReader(
            bootstrapServers: bootstrapServers, topic: topic, properties: properties, logger: logger,
            onRecreated: { _, _ in
                table.clear()
                table.recreations.add(1, ordering: .relaxed)
                continuation.yield()
            }
        ) { record in
            do throws(ControlRecordRejected) {
                if let keys, ControlSigner.allowed(key: record.key, value: record.value) != nil {
                    _ = try keys.verify(topic: topic, key: record.key, value: record.value, headers: record.headers, offset: record.offset)
                }
                switch try ControlRecord.parse(key: record.key, value: record.value, offset: record.offset) {
                case .flag(let key, let enabled, let reason, let who, let rate):
                    table.flags.withLock { $0[key] = enabled.map { FlagSetting(enabled: $0, source: "control", reason: reason, rate: rate, who: who) } }
                    continuation.yield()
                case .trip(let topicPartition, let trip):
                    table.trips.withLock { $0[topicPartition] = trip }
                case .host(let identity, let status):
                    table.hosts.withLock { $0[identity] = status }
                case .quarantine(let topicPartition, let quarantine):
                    let problem = table.quarantines.withLock { quarantines -> String? in
                        if let problem = quarantine?.releaseProblem(over: quarantines[topicPartition]) { return problem }
                        quarantines[topicPartition] = quarantine
                        return nil
                    }
                    if let problem {
                        throw ControlRecordRejected(key: record.key, offset: record.offset, reason: .release, detail: problem)
                    }
                case .command(_, let command?):
                    table.commands.withLock { commands in
                        commands.append((record.offset, command))
                        if commands.count > 1_000 { commands.removeFirst(commands.count - 1_000) }
                    }
                case .command(_, nil):
                    return
                case nil:
                    return
                }
            } catch {
                rejections.record(error)
            }
        }
    }

    /// Reads the control topic to its end (records written before now all applied). Throws when it cannot
    /// within `timeout`: a host does not fetch without its control state.
    public func load(timeout: Duration) async throws {
        do {
            try await reader.load(timeout: timeout)
        } catch {
            throw SluiceError(code: .state, message: "control topic '\(topic)' could not be read: \(error.message); the host does not fetch without it")
        }
    }

    /// Yields when a flag record changed a flag.
    public var changes: AsyncStream<Void>? { stream }

    /// The control plane's flags now.
    public func load() async throws -> [FlagKey: FlagSetting] {
        // The reader's position is updated after each record's table change: read it first, so what is
        // reported as loaded is never ahead of the flags handed out.
        let position = reader.position
        let flags = table.flags.withLock { $0 }
        table.loadedPosition.withLock { $0 = max($0, position) }
        return flags
    }

    /// The control plane's setting of one flag key (nil: not set there).
    public func flag(_ key: FlagKey) -> FlagSetting? { table.flags.withLock { $0[key] } }

    /// Every control record before this offset was loaded into the host's flags.
    public var loadedPosition: Int64 { table.loadedPosition.withLock { $0 } }

    /// Control records refused since the host started (each logged once, counted by reason, and ignored: what
    /// it would have changed keeps its last good state), and the latest of them.
    public var rejected: (count: Int, latest: [ControlRecordRejected]) { rejections.snapshot }

    /// How many times the control topic turned out to be another one than was read (deleted and created
    /// again): each time the tables were emptied and the topic read from its beginning.
    public var topicRecreations: Int { table.recreations.load(ordering: .relaxed) }

    /// What every host of the group last said of itself.
    public var hosts: [String: ControlHostStatus] { table.hosts.withLock { $0 } }

    /// The group-wide trip of a partition, if its breaker holds it.
    func trip(for topicPartition: TopicPartition) -> ControlRecord.Trip? { table.trips.withLock { $0[topicPartition] } }

    /// The group's tripped shards.
    public var trips: [TopicPartition: ControlRecord.Trip] { table.trips.withLock { $0 } }

    /// Commands read at or after `offset`, in order (the latest 1,000).
    public func commands(from offset: Int64) -> [(offset: Int64, command: ControlCommand)] {
        table.commands.withLock { $0.filter { $0.offset >= offset } }
    }

    /// One partition's quarantine, if any (without copying the whole table).
    func quarantine(for topicPartition: TopicPartition) -> Quarantine? { table.quarantines.withLock { $0[topicPartition] } }

    /// The group's quarantined (or counted) messages.
    public var quarantines: [TopicPartition: Quarantine] { table.quarantines.withLock { $0 } }

    /// Waits until the record at `offset` is applied, at most `timeout`; returns whether it is.
    func waitUntilApplied(_ offset: Int64, timeout: Duration) async -> Bool {
        let deadline = clock.now + timeout
        while reader.position <= offset {
            guard clock.now < deadline else { return false }
            try? await clock.sleep(until: clock.now + .milliseconds(10))
        }
        return true
    }

    /// The offset of the next control record to read: every record before it is applied.
    public var appliedPosition: Int64 { reader.position }

    /// Waits until every control record written before this call is applied: a host taking over partitions
    /// acts on the group's latest flags, trips and quarantines, not on a reader that lags (a quarantine the
    /// partition's last owner published just before). Returns false when that did not happen within
    /// `timeout`; the host then goes on with what it has.
    func catchUp(timeout: Duration) async -> Bool {
        guard let end = try? await reader.endOffset(timeout: timeout) else { return false }
        return await waitUntilApplied(end - 1, timeout: timeout)
    }

    /// Stops tailing.
    public func close() async { await reader.close() }
}

/// One change to a group's control state, as the audit topic keeps it: who, why, what, before and after.
public struct AuditEntry: Sendable, Equatable {
    /// When, in milliseconds since the epoch.
    public var atMilliseconds: Int64
    /// Who (an operator through the CLI or the admin API, or a host).
    public var who: String?
    /// Why, when given.
    public var reason: String?
    /// The control record's key (`flag/orders`, `quarantine/orders/3`, `command/...`).
    public var subject: String
    /// The state before (nil: not known to the writer) and after the change.
    public var before: String?
    public var after: String
    /// The control record's offset.
    public var controlOffset: Int64
    /// Who signed the change (`operator` or `host`), when the group's records are signed.
    public var signer: ControlSigner?

    /// Creates an entry.
    public init(atMilliseconds: Int64, who: String?, reason: String?, subject: String, before: String?, after: String, controlOffset: Int64) {
        self.atMilliseconds = atMilliseconds
        self.who = who
        self.reason = reason
        self.subject = subject
        self.before = before
        self.after = after
        self.controlOffset = controlOffset
    }

    /// The entry's JSON value (`{"v":1,...}`).
    public var encoded: [UInt8] {
        var object: [String: Any] = ["v": ControlRecord.version, "atMillis": atMilliseconds, "subject": subject, "after": after, "controlOffset": controlOffset]
        if let who { object["who"] = who }
        if let reason { object["reason"] = reason }
        if let before { object["before"] = before }
        if let signer { object["signer"] = signer.rawValue }
        return Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data())
    }

    /// Reads an entry; nil when it is not one this version reads.
    public init?(decoding value: [UInt8]) {
        struct Refused: Error {}
        guard let object = JSONFields.object(value) else { return nil }
        let fields = JSONFields(object) { _, _ in Refused() }
        guard (try? fields.int64("v", in: 0...Int64(Int32.max))) == Int64(ControlRecord.version),
            let at = try? fields.int64("atMillis", in: InputLimits.epochMilliseconds),
            let subject = try? fields.string("subject", maxLength: InputLimits.identityLength),
            let after = try? fields.string("after", maxLength: InputLimits.textLength),
            let offset = try? fields.int64("controlOffset", in: InputLimits.offsets),
            case .success(let who) = Result(catching: { try fields.string("who", maxLength: InputLimits.identityLength) }),
            case .success(let reason) = Result(catching: { try fields.string("reason", maxLength: InputLimits.textLength) }),
            case .success(let before) = Result(catching: { try fields.string("before", maxLength: InputLimits.textLength) })
        else { return nil }
        self.init(atMilliseconds: at, who: who, reason: reason, subject: subject, before: before, after: after, controlOffset: offset)
        signer = (try? fields.string("signer", maxLength: 16)).flatMap { $0.flatMap(ControlSigner.init(rawValue:)) }
    }
}

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
            KafkaTopicAdmin.NewTopic(name: auditTopic(forControl: topic), replicationFactor: replicationFactor, config: ["cleanup.policy": "delete"]),
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
        return try await producer.send(ProducerRecord(topic: topic, partition: 0, key: Array(record.key.utf8), value: record.value, headers: headers)).offset
    }

    /// Writes the audit entry of a change already made; a failure is logged, not thrown (the change stands).
    private func audit(
        _ subject: String, before: String?, after: String, who: String?, reason: String?, offset: Int64, signer: ControlSigner
    ) async {
        var entry = AuditEntry(
            atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), who: who, reason: reason, subject: subject, before: before, after: after,
            controlOffset: offset)
        entry.signer = keys == nil ? nil : signer
        do {
            let headers = (try? keys?.sign(topic: auditTopic, signer: signer, key: subject, value: entry.encoded)) ?? []
            _ = try await producer.send(ProducerRecord(topic: auditTopic, partition: 0, key: Array(subject.utf8), value: entry.encoded, headers: headers))
        } catch {
            logger.warning("the change was made but its audit entry could not be written", metadata: ["sluice.subject": "\(subject)", "error": "\(error)"])
        }
    }

    /// Creates a writer with its own producer; with `keys`, it signs what it writes (and refuses to write a
    /// record of a role it holds no key for).
    public init(bootstrapServers: String, topic: String, properties: [String: String] = [:], keys: ControlKeys? = nil, logger: Logger) throws {
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
        _ key: FlagKey, enabled: Bool?, reason: String?, who: String?, rate: Double? = nil, before: FlagSetting?? = .none, audited: Bool = true
    ) async throws -> Int64 {
        let offset = try await write(ControlRecord.flag(key, enabled: rate != nil ? true : enabled, reason: reason, who: who, rate: rate).encoded, as: .operator)
        if audited {
            await auditFlag(key, enabled: enabled, rate: rate, reason: reason, who: who, before: before.map { $0 }, offset: offset, knowsBefore: before != nil)
        }
        return offset
    }

    /// Writes the audit entry of a flag change made at control offset `offset`; `before` is the flag's
    /// control-plane value before it (nil: unset).
    public func auditFlag(_ key: FlagKey, enabled: Bool?, rate: Double?, reason: String?, who: String?, before: FlagSetting?, offset: Int64) async {
        await auditFlag(key, enabled: enabled, rate: rate, reason: reason, who: who, before: before, offset: offset, knowsBefore: true)
    }

    private func auditFlag(
        _ key: FlagKey, enabled: Bool?, rate: Double?, reason: String?, who: String?, before: FlagSetting??, offset: Int64, knowsBefore: Bool
    ) async {
        let after = rate.map(ControlRecord.describeRate) ?? enabled.map { $0 ? "on" : "off" } ?? "unset"
        let previous = knowsBefore ? (before.flatMap { $0 }.map { $0.rate.map(ControlRecord.describeRate) ?? ($0.enabled ? "on" : "off") } ?? "unset") : nil
        await audit("flag/\(key)", before: previous, after: after, who: who, reason: reason, offset: offset, signer: .operator)
    }

    /// Publishes a shard's trip (nil: cleared) for the group.
    func setTrip(_ topicPartition: TopicPartition, _ trip: ControlRecord.Trip?) async throws {
        _ = try await write(ControlRecord.trip(topicPartition, trip).encoded, as: .host)
    }

    /// Publishes a quarantine (nil: released) for the group; returns the record's offset. A host records
    /// quarantines and clears its suspects (`signer` host); an operator releases (the default for releases).
    @discardableResult
    public func setQuarantine(
        _ topicPartition: TopicPartition, _ quarantine: Quarantine?, before: Quarantine? = nil, signer: ControlSigner? = nil
    ) async throws -> Int64 {
        let record = ControlRecord.quarantine(topicPartition, quarantine).encoded
        let recordKey = record.key
        let signer = signer ?? (quarantine?.isRecordedByHost == true ? .host : .operator)
        let offset = try await write(record, as: signer)
        func describe(_ quarantine: Quarantine?) -> String {
            quarantine.map { "\($0.state.rawValue) at offset \($0.offset) (\($0.crashes) crash\($0.crashes == 1 ? "" : "es"), \($0.signal))" } ?? "released"
        }
        await audit(
            recordKey, before: before.map(describe), after: describe(quarantine), who: quarantine?.who ?? quarantine?.host, reason: quarantine?.reason,
            offset: offset, signer: signer)
        return offset
    }

    /// Sends a command to the group (carried out by the host that owns its shard); returns its offset.
    @discardableResult
    public func send(_ command: ControlCommand) async throws -> Int64 {
        let record = ControlRecord.command("\(UInt64.random(in: 0...UInt64.max))", command).encoded
        let offset = try await write(record, as: .operator)
        await audit(
            record.key, before: nil, after: "\(command.action.rawValue) \(command.topicPartition)", who: command.who, reason: nil, offset: offset,
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
