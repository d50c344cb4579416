import Foundation

/// A control record (or another JSON document from outside the process) that is refused: which one, why, and
/// the class of reason it is counted under (`sluice_control_records_rejected_total{reason}`).
public struct ControlRecordRejected: Error, Sendable, CustomStringConvertible {
    /// The class of a rejection, the metric's `reason` label.
    public enum Reason: String, Sendable, CaseIterable {
        /// The key does not name anything this version knows how to read (`trip/orders` without a partition).
        case key
        /// The value is not a JSON object, or not in the schema version this host reads.
        case format
        /// A field is missing or of the wrong type.
        case field
        /// A field is outside the range a host could have written (a negative offset, a time before 1970).
        case range
        /// A release names offsets no host recorded as quarantined.
        case release
        /// The record is not signed, or not by a key that may write it.
        case signature
    }

    /// The record's key (at most 200 characters of it).
    public let key: String
    /// The record's offset in the control topic.
    public let offset: Int64
    /// The class of reason.
    public let reason: Reason
    /// What is wrong, naming the field.
    public let detail: String

    /// Creates a rejection.
    public init(key: String, offset: Int64, reason: Reason, detail: String) {
        self.key = String(key.prefix(200))
        self.offset = offset
        self.reason = reason
        self.detail = detail
    }

    public var description: String { "control record '\(key)' at offset \(offset): \(detail)" }
}

/// The ranges a value from outside the process must be in before anything is computed from it. Every bound is far
/// beyond what a real host writes and far enough from the integer limits that sums and differences of two
/// such values cannot overflow (docs/architecture.md, "Trust boundaries").
public enum InputLimits {
    /// Kafka offsets: 0 up to 2⁶² (Kafka's own are below 2⁶³; no partition holds 2⁶² records).
    public static let offsets: ClosedRange<Int64> = 0...(1 << 62)
    /// Milliseconds since the epoch: 1970 up to the year 9999.
    public static let epochMilliseconds: ClosedRange<Int64> = 0...253_402_300_799_999
    /// Counters a host reports (messages processed, crashes, restarts): 0 up to 2⁵³.
    public static let counts: ClosedRange<Int64> = 0...(1 << 53)
    /// Messages one quarantine may cover (one handler call, or the calls in flight at an unattributed death).
    /// A host bounds it further by the topic's `maxInFlight`.
    public static let quarantineSpan: ClosedRange<Int64> = 1...1_000_000
    /// Seconds a host reports (a next probe): 0 up to a century.
    public static let seconds: ClosedRange<Double> = 0...3_155_760_000
    /// Characters of a host identity, a signal name or a shard key.
    public static let identityLength = 256
    /// Characters of a reason, an operator name or an error text.
    public static let textLength = 4_096
    /// Characters of a crash report.
    public static let reportLength = 65_536
    /// Entries of a host's shard table.
    public static let shardsPerHost = 100_000
}

/// The fields of a JSON object from outside the process, each read with its type and range checked: an integer
/// is an exact JSON integer (not a boolean, not a fraction, not a number beyond Int64), a string has a bounded
/// length. A field that is present and wrong is an error naming it; absent fields are nil.
public struct JSONFields {
    /// The object.
    public let object: [String: Any]
    private let reject: (ControlRecordRejected.Reason, String) -> any Error

    /// Reads `object`; `reject` makes the error for a field (its reason and what is wrong).
    public init(_ object: [String: Any], reject: @escaping (ControlRecordRejected.Reason, String) -> any Error) {
        self.object = object
        self.reject = reject
    }

    /// Parses `value` as a JSON object; nil when it is not one.
    public static func object(_ value: [UInt8]) -> [String: Any]? {
        try? JSONSerialization.jsonObject(with: Data(value)) as? [String: Any]
    }

    /// Whether a JSON value is `true` or `false` (JSONSerialization turns them into NSNumber, as it does 0 and 1).
    public static func isBoolean(_ value: Any) -> Bool {
        guard let number = value as? NSNumber else { return false }
        return String(cString: number.objCType) == "c" || type(of: number) == type(of: NSNumber(value: true))
    }

    /// An integer field in `range`; nil when absent (or JSON null).
    public func int64(_ name: String, in range: ClosedRange<Int64>) throws -> Int64? {
        guard let value = object[name], !(value is NSNull) else { return nil }
        guard !Self.isBoolean(value), let number = value as? Int64 else {
            throw reject(.field, "'\(name)' must be an integer, got \(Self.describe(value))")
        }
        guard range.contains(number) else {
            throw reject(.range, "'\(name)' must be in \(range.lowerBound)...\(range.upperBound), got \(number)")
        }
        return number
    }

    /// An integer field in `range` that must be there.
    public func requiredInt64(_ name: String, in range: ClosedRange<Int64>) throws -> Int64 {
        guard let number = try int64(name, in: range) else { throw reject(.field, "'\(name)' is missing") }
        return number
    }

    /// An integer field in `range`, as an `Int`.
    public func int(_ name: String, in range: ClosedRange<Int64>) throws -> Int? {
        try int64(name, in: range).map { Int($0) }
    }

    /// A number field in `range` (finite); nil when absent.
    public func double(_ name: String, in range: ClosedRange<Double>) throws -> Double? {
        guard let value = object[name], !(value is NSNull) else { return nil }
        guard !Self.isBoolean(value), let number = value as? Double, number.isFinite else {
            throw reject(.field, "'\(name)' must be a number, got \(Self.describe(value))")
        }
        guard range.contains(number) else {
            throw reject(.range, "'\(name)' must be in \(range.lowerBound)...\(range.upperBound), got \(number)")
        }
        return number
    }

    /// A string field of at most `maxLength` characters; nil when absent.
    public func string(_ name: String, maxLength: Int) throws -> String? {
        guard let value = object[name], !(value is NSNull) else { return nil }
        guard let text = value as? String else {
            throw reject(.field, "'\(name)' must be a string, got \(Self.describe(value))")
        }
        guard text.utf8.count <= maxLength * 4, text.count <= maxLength else {
            throw reject(.range, "'\(name)' is longer than \(maxLength) characters")
        }
        return text
    }

    /// An array of strings, each of at most `maxLength` characters, at most `maxCount` of them; nil when absent.
    public func strings(_ name: String, maxLength: Int, maxCount: Int) throws -> [String]? {
        guard let value = object[name], !(value is NSNull) else { return nil }
        guard let texts = value as? [Any], texts.count <= maxCount else {
            throw reject(.field, "'\(name)' must be a list of at most \(maxCount) strings")
        }
        return try texts.map { item in
            guard let text = item as? String, text.count <= maxLength else {
                throw reject(.field, "'\(name)' must hold strings of at most \(maxLength) characters")
            }
            return text
        }
    }

    /// A nested object; nil when absent.
    public func object(_ name: String) throws -> [String: Any]? {
        guard let value = object[name], !(value is NSNull) else { return nil }
        guard let nested = value as? [String: Any] else { throw reject(.field, "'\(name)' must be an object") }
        return nested
    }

    /// A value for an error message: its type and at most 40 characters of it.
    static func describe(_ value: Any) -> String {
        if isBoolean(value) { return "a boolean" }
        if value is String { return "a string" }
        if value is [Any] { return "a list" }
        if value is [String: Any] { return "an object" }
        return "'\(String(describing: value).prefix(40))'"
    }
}
