import Foundation
import Logging
import Metrics
import SluiceKafka
import Synchronization

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

    /// The entry's JSON value (`{"v":1,...}`).
    public var encoded: [UInt8] {
        var object: [String: Any] = [
            "v": ControlRecord.version, "atMillis": atMilliseconds, "subject": subject, "after": after,
            "controlOffset": controlOffset,
        ]
        if let who { object["who"] = who }
        if let reason { object["reason"] = reason }
        if let before { object["before"] = before }
        if let signer { object["signer"] = signer.rawValue }
        return Array(
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
                ?? Data())
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
            case .success(let who) = Result(catching: {
                try fields.string("who", maxLength: InputLimits.identityLength)
            }),
            case .success(let reason) = Result(catching: {
                try fields.string("reason", maxLength: InputLimits.textLength)
            }),
            case .success(let before) = Result(catching: {
                try fields.string("before", maxLength: InputLimits.textLength)
            })
        else { return nil }
        self.init(
            atMilliseconds: at, who: who, reason: reason, subject: subject, before: before, after: after,
            controlOffset: offset)
        signer = (try? fields.string("signer", maxLength: 16)).flatMap { $0.flatMap(ControlSigner.init(rawValue:)) }
    }
}
