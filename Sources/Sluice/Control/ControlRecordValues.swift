import Foundation
import SluiceKafka

/// The JSON values of control records, one `Codable` type per kind of record. Each reads its fields with the
/// checked reads of ``CheckedJSON``; ``ControlRecord`` reads the key and adds the record's key and offset to a
/// refusal.
extension ControlRecord {
    /// What every value starts with: its schema version, and the state that decides how the rest is read.
    struct Header: Decodable {
        var version: Int64
        var state: String?

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: FieldName.self)
            guard let version = try fields.integer("v", in: 0...Int64(Int32.max)) else {
                throw FieldRefused(.format, "no schema version 'v'")
            }
            self.version = version
            state = try fields.text("state", maxLength: InputLimits.identityLength)
        }
    }

    /// A value as written: its fields, the schema version `v` and, for records an operator reads back, when it
    /// was written (`at`, ISO 8601).
    struct Stamped<Body: Encodable>: Encodable {
        var body: Body
        var at: Date?

        func encode(to encoder: any Encoder) throws {
            try body.encode(to: encoder)
            var fields = encoder.container(keyedBy: FieldName.self)
            try fields.encode(ControlRecord.version, forKey: "v")
            if let at { try fields.encode(at.formatted(.iso8601), forKey: "at") }
        }
    }

    /// `flag/KEY`: `{"state": "on" | "off" | "unset" | "200/s", "reason", "who"}`.
    struct FlagValue: Codable {
        var state: String
        var reason: String?
        var who: String?

        init(enabled: Bool?, rate: Double?, reason: String?, who: String?) {
            state = rate.map(ControlRecord.describeRate) ?? enabled.map { $0 ? "on" : "off" } ?? "unset"
            self.reason = reason
            self.who = who
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: CodingKeys.self)
            reason = try fields.text(.reason, maxLength: InputLimits.textLength)
            who = try fields.text(.who, maxLength: InputLimits.identityLength)
            let state = try fields.text(.state, maxLength: 32)
            guard let state, ["on", "off", "unset"].contains(state) || ControlRecord.parseRate(state) != nil else {
                throw FieldRefused(
                    .field,
                    "state must be on, off, unset or a rate such as 200/s, got \(state.map { "'\($0)'" } ?? "none")")
            }
            self.state = state
        }

        func record(_ key: FlagKey) -> ControlRecord {
            switch state {
            case "on": .flag(key, enabled: true, reason: reason, who: who)
            case "off": .flag(key, enabled: false, reason: reason, who: who)
            case "unset": .flag(key, enabled: nil, reason: reason, who: who)
            default: .flag(key, enabled: true, reason: reason, who: who, rate: ControlRecord.parseRate(state))
            }
        }
    }

    /// `trip/TOPIC/PARTITION`: `{"state": "tripped", "offset", "reason"}` or `{"state": "clear"}`.
    struct TripValue: Codable {
        var state: String
        var offset: Int64?
        var reason: String?

        init(_ trip: Trip?) {
            state = trip == nil ? "clear" : "tripped"
            offset = trip?.offset
            reason = trip?.reason
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: CodingKeys.self)
            let state = try fields.text(.state, maxLength: 16)
            guard let state, state == "tripped" || state == "clear" else {
                throw FieldRefused(
                    .field, "state must be tripped or clear, got \(state.map { "'\($0)'" } ?? "none")")
            }
            self.state = state
            offset = try fields.integer(.offset, in: InputLimits.offsets)
            reason = try fields.text(.reason, maxLength: InputLimits.textLength)
        }

        var trip: Trip? { state == "tripped" ? Trip(offset: offset, reason: reason ?? "tripped") : nil }
    }

    /// `command/ID`: `{"action": "reset", "shard": "TOPIC/PARTITION", "who"}`.
    struct CommandValue: Codable {
        var action: String
        var shard: String
        var who: String?

        init(_ command: ControlCommand) {
            action = command.action.rawValue
            shard = command.topicPartition.description
            who = command.who
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: CodingKeys.self)
            let action = try fields.text(.action, maxLength: 16)
            guard action == ControlCommand.Action.reset.rawValue else {
                throw FieldRefused(.field, "action must be reset, got \(action.map { "'\($0)'" } ?? "none")")
            }
            self.action = ControlCommand.Action.reset.rawValue
            guard let shard = try fields.text(.shard, maxLength: InputLimits.identityLength),
                TopicPartition(parsing: shard) != nil
            else {
                throw FieldRefused(.field, "a reset names its shard as TOPIC/PARTITION")
            }
            self.shard = shard
            who = try fields.text(.who, maxLength: InputLimits.identityLength)
        }

        var command: ControlCommand? {
            TopicPartition(parsing: shard).map { ControlCommand(action: .reset, topicPartition: $0, who: who) }
        }
    }

    /// The end of a host's or a quarantine's record (`{"state": "gone"}`, `{"state": "released"}`).
    struct Ended: Encodable {
        var state: String
    }
}
