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
            return try parseChecked(key: key, value: value)
        } catch {
            throw ControlRecordRejected(key: key, offset: offset, reason: error.reason, detail: error.detail)
        }
    }

    private static func parseChecked(key: String, value: [UInt8]?) throws(FieldRefused) -> ControlRecord? {
        /// The value's fields as `T`, after its schema version is checked; `what` keeps its state otherwise.
        func read<T: Decodable>(_ type: T.Type, _ value: [UInt8], keeps what: String) throws(FieldRefused) -> T {
            let header = try CheckedJSON.decode(Header.self, from: value)
            guard header.version == Self.version else {
                throw FieldRefused(
                    .format,
                    "schema version \(header.version) is not understood (this host reads \(Self.version)); \(what) keeps its previous state"
                )
            }
            return try CheckedJSON.decode(type, from: value)
        }
        func state(of value: [UInt8]) -> String? { try? CheckedJSON.decode(Header.self, from: value).state }

        if key.hasPrefix("trip/") {
            let topicPartition = try partitionKey(key, kind: "trip")
            guard let value else { return .trip(topicPartition, nil) }
            return .trip(topicPartition, try read(TripValue.self, value, keeps: "the shard").trip)
        }
        if key.hasPrefix("command/") {
            let identifier = String(key.dropFirst("command/".count))
            guard !identifier.isEmpty, identifier.count <= InputLimits.identityLength else {
                throw FieldRefused(.key, "a command key is command/ID")
            }
            guard let value else { return .command(identifier, nil) }
            return .command(identifier, try read(CommandValue.self, value, keeps: "nothing").command)
        }
        if key.hasPrefix("quarantine/") {
            let topicPartition = try partitionKey(key, kind: "quarantine")
            guard let value else { return .quarantine(topicPartition, nil) }
            _ = try read(Header.self, value, keeps: "the shard")
            if state(of: value) == "released" { return .quarantine(topicPartition, nil) }
            return .quarantine(topicPartition, try read(Quarantine.self, value, keeps: "the shard"))
        }
        if key.hasPrefix("host/") {
            let identity = String(key.dropFirst("host/".count))
            guard !identity.isEmpty, identity.count <= InputLimits.identityLength else {
                throw FieldRefused(.key, "a host key is host/ID")
            }
            guard let value else { return .host(identity, nil) }
            _ = try read(Header.self, value, keeps: "the host")
            if state(of: value) == "gone" { return .host(identity, nil) }
            return .host(identity, try read(ControlHostStatus.self, value, keeps: "the host"))
        }
        guard key.hasPrefix("flag/") else { return nil }
        let flagKey: FlagKey
        do {
            flagKey = try FlagKey(parsing: String(key.dropFirst("flag/".count)))
        } catch {
            throw FieldRefused(.key, (error as? SluiceError)?.message ?? "\(error)")
        }
        guard let value else { return .flag(flagKey, enabled: nil, reason: nil, who: nil) }
        return try read(FlagValue.self, value, keeps: "the flag").record(flagKey)
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

    /// The partition of a `KIND/TOPIC/PARTITION` key.
    private static func partitionKey(_ key: String, kind: String) throws(FieldRefused) -> TopicPartition {
        let parts = key.dropFirst(kind.count + 1).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, TopicName.problem(String(parts[0])) == nil, let partition = Int32(parts[1]),
            partition >= 0
        else {
            throw FieldRefused(.key, "a \(kind) key is \(kind)/TOPIC/PARTITION")
        }
        return TopicPartition(String(parts[0]), partition)
    }

    /// The record's key and value.
    public var encoded: (key: String, value: [UInt8]) {
        switch self {
        case .command(let identifier, let command):
            guard let command else { return ("command/\(identifier)", []) }
            return ("command/\(identifier)", CheckedJSON.encode(Stamped(body: CommandValue(command), at: Date())))
        case .quarantine(let topicPartition, let quarantine):
            let key = "quarantine/\(topicPartition.topic)/\(topicPartition.partition)"
            guard let quarantine else {
                return (key, CheckedJSON.encode(Stamped(body: Ended(state: "released"), at: Date())))
            }
            return (key, CheckedJSON.encode(Stamped(body: quarantine, at: Date())))
        case .host(let identity, let status):
            guard let status else {
                return ("host/\(identity)", CheckedJSON.encode(Stamped(body: Ended(state: "gone"))))
            }
            return ("host/\(identity)", CheckedJSON.encode(Stamped(body: status)))
        case .trip(let topicPartition, let trip):
            return (
                "trip/\(topicPartition.topic)/\(topicPartition.partition)",
                CheckedJSON.encode(Stamped(body: TripValue(trip), at: Date()))
            )
        case .flag(let flagKey, let enabled, let reason, let who, let rate):
            let value = FlagValue(enabled: enabled, rate: rate, reason: reason, who: who)
            return ("flag/\(flagKey)", CheckedJSON.encode(Stamped(body: value, at: Date())))
        }
    }
}
