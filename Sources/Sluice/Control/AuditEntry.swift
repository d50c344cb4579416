import Foundation
import Logging
import Metrics
import SluiceKafka
import Synchronization

/// One change to a group's control state, as the audit topic keeps it: who, why, what, before and after.
public struct AuditEntry: Codable, Sendable, Equatable {
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
    public init(
        atMilliseconds: Int64, who: String?, reason: String?, subject: String, before: String?, after: String,
        controlOffset: Int64
    ) {
        self.atMilliseconds = atMilliseconds
        self.who = who
        self.reason = reason
        self.subject = subject
        self.before = before
        self.after = after
        self.controlOffset = controlOffset
    }

    enum CodingKeys: String, CodingKey {
        case who, reason, subject, before, after, controlOffset, signer
        case atMilliseconds = "atMillis"
    }

    /// The entry's JSON value (`{"v":1,...}`).
    public var encoded: [UInt8] { CheckedJSON.encode(ControlRecord.Stamped(body: self)) }

    /// Reads an entry; nil when it is not one this version reads.
    public init?(decoding value: [UInt8]) {
        guard
            (try? CheckedJSON.decode(ControlRecord.Header.self, from: value))?.version == Int64(ControlRecord.version),
            let entry = try? CheckedJSON.decode(Self.self, from: value)
        else { return nil }
        self = entry
    }

    /// Reads an entry's fields, each checked against ``InputLimits``.
    public init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: CodingKeys.self)
        func required(_ text: String?, _ name: String) throws(FieldRefused) -> String {
            guard let text else { throw FieldRefused(.field, "'\(name)' is missing") }
            return text
        }
        self.init(
            atMilliseconds: try fields.requiredInteger(.atMilliseconds, in: InputLimits.epochMilliseconds),
            who: try fields.text(.who, maxLength: InputLimits.identityLength),
            reason: try fields.text(.reason, maxLength: InputLimits.textLength),
            subject: try required(fields.text(.subject, maxLength: InputLimits.identityLength), "subject"),
            before: try fields.text(.before, maxLength: InputLimits.textLength),
            after: try required(fields.text(.after, maxLength: InputLimits.textLength), "after"),
            controlOffset: try fields.requiredInteger(.controlOffset, in: InputLimits.offsets))
        signer = (try? fields.text(.signer, maxLength: 16)).flatMap { $0.flatMap(ControlSigner.init(rawValue:)) }
    }
}
