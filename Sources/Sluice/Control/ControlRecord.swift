import Foundation
import Logging
import Metrics
import SluiceKafka
import Synchronization

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
    public static func parse(key: String, value: [UInt8]?, offset: Int64) throws(ControlRecordRejected)
        -> ControlRecord?
    {
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
                return .trip(
                    topicPartition, Trip(offset: try object.int64("offset", in: InputLimits.offsets), reason: reason))
            case "clear":
                return .trip(topicPartition, nil)
            case let other:
                throw bad(.field, "state must be tripped or clear, got \(other.map { "'\($0)'" } ?? "none")")
            }
        }
        if key.hasPrefix("command/") {
            let identifier = String(key.dropFirst("command/".count))
            guard !identifier.isEmpty, identifier.count <= InputLimits.identityLength else {
                throw bad(.key, "a command key is command/ID")
            }
            guard let value else { return .command(identifier, nil) }
            let object = try fields(value, keeps: "nothing")
            let action = try object.string("action", maxLength: 16)
            guard action == "reset" else {
                throw bad(.field, "action must be reset, got \(action.map { "'\($0)'" } ?? "none")")
            }
            guard let shard = try object.string("shard", maxLength: InputLimits.identityLength),
                let topicPartition = TopicPartition(parsing: shard)
            else {
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
            guard !identity.isEmpty, identity.count <= InputLimits.identityLength else {
                throw bad(.key, "a host key is host/ID")
            }
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
        case let other:
            throw bad(
                .field, "state must be on, off, unset or a rate such as 200/s, got \(other.map { "'\($0)'" } ?? "none")"
            )
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
            return (
                off
                    ? "start, slowed to \(describeRate(rate)), unless another flag keeps it off"
                    : "slow to \(describeRate(rate))", true
            )
        case (false?, _):
            return off ? ("stay off", false) : ("drain, commit and stop", true)
        case (true?, _):
            return off ? ("start, unless another flag keeps it off", true) : ("keep running", false)
        case (nil, nil):
            return off
                ? ("start, unless another layer keeps it off", true)
                : ("keep running, unless another layer stops it", true)
        }
    }

    /// A rate written `N/s` (N from 0.001, one message in about 17 minutes, to a million), in messages a second.
    public static func parseRate(_ text: String) -> Double? {
        guard text.hasSuffix("/s"), text.count <= 32, let rate = Double(text.dropLast(2)), rate.isFinite, rate >= 0.001,
            rate <= 1_000_000
        else {
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
        _ value: [UInt8], keeps what: String,
        bad: @escaping (ControlRecordRejected.Reason, String) -> ControlRecordRejected
    ) throws -> JSONFields {
        guard let object = JSONFields.object(value) else { throw bad(.format, "the value is not a JSON object") }
        let fields = JSONFields(object) { bad($0, $1) }
        guard let version = try fields.int64("v", in: 0...Int64(Int32.max)) else {
            throw bad(.format, "no schema version 'v'")
        }
        guard version == Self.version else {
            throw bad(
                .format,
                "schema version \(version) is not understood (this host reads \(Self.version)); \(what) keeps its previous state"
            )
        }
        return fields
    }

    /// The partition of a `KIND/TOPIC/PARTITION` key.
    private static func partitionKey(
        _ key: String, kind: String, bad: (ControlRecordRejected.Reason, String) -> ControlRecordRejected
    ) throws -> TopicPartition {
        let parts = key.dropFirst(kind.count + 1).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, TopicName.problem(String(parts[0])) == nil, let partition = Int32(parts[1]),
            partition >= 0
        else {
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
                "v": Self.version, "action": command.action.rawValue, "shard": command.topicPartition.description,
                "at": Date().formatted(.iso8601),
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
            var object: [String: Any] = [
                "v": Self.version, "state": trip == nil ? "clear" : "tripped", "at": Date().formatted(.iso8601),
            ]
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
