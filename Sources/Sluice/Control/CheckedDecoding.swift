import Foundation

/// A field of a JSON document from outside the process that is refused: the class of reason and what is wrong,
/// naming the field. The checked reads below throw it; a record's reader adds the record's key and offset.
public struct FieldRefused: Error, Sendable, CustomStringConvertible {
    /// The class of reason (the `reason` label of the rejection metrics).
    public var reason: ControlRecordRejected.Reason
    /// What is wrong, naming the field.
    public var detail: String

    /// Creates a refusal.
    public init(_ reason: ControlRecordRejected.Reason, _ detail: String) {
        self.reason = reason
        self.detail = detail
    }

    public var description: String { detail }
}

/// Reads a `Decodable` from a JSON document that came from outside the process (a control record, a file, an
/// HTTP body). The type's `init(from:)` reads its fields with the checked reads of `KeyedDecodingContainer`
/// below; what `JSONDecoder` itself refuses (not JSON, not an object, a field of the wrong type) becomes a
/// ``FieldRefused`` naming the field.
public enum CheckedJSON {
    /// Decodes `bytes` as `type`.
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: some Collection<UInt8>) throws(FieldRefused)
        -> T
    {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch let refused as FieldRefused {
            throw refused
        } catch let error as DecodingError {
            throw refusal(error)
        } catch {
            throw FieldRefused(.format, "\(error)")
        }
    }

    /// Encodes `value` with sorted keys and unescaped slashes, as every control record is written.
    public static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map(Array.init) ?? Array("{}".utf8)
    }

    /// What `JSONDecoder` refused, as a refusal naming the field by its path.
    static func refusal(_ error: DecodingError) -> FieldRefused {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? "'\($0.stringValue)'" }.joined(separator: ".")
        }
        switch error {
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            return FieldRefused(.format, "the value is not a JSON object")
        case .typeMismatch(_, let context) where context.codingPath.isEmpty:
            return FieldRefused(.format, "the value is not a JSON object")
        case .typeMismatch(let type, let context):
            return FieldRefused(.field, "\(path(context)) must be \(describe(type))")
        case .dataCorrupted(let context):
            return FieldRefused(.field, "\(path(context)) cannot be read: \(context.debugDescription.prefix(80))")
        case .keyNotFound(let key, let context):
            let parent = context.codingPath.isEmpty ? "" : "\(path(context)): "
            return FieldRefused(.field, "\(parent)'\(key.stringValue)' is missing")
        case .valueNotFound(let type, let context):
            return FieldRefused(.field, "\(path(context)) must be \(describe(type)), got null")
        @unknown default:
            return FieldRefused(.format, "\(error)")
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "a boolean"
        case is Int.Type, is Int64.Type, is Int32.Type: "an integer"
        case is Double.Type: "a number"
        default: "\(type)".hasPrefix("Array") ? "a list" : "an object"
        }
    }
}

/// Checked reads of a JSON object from outside the process: each field's type and range is checked before
/// anything is computed from it. An integer is an exact JSON integer (not a boolean, not a fraction, not a
/// number beyond Int64), a number is finite, a string has a bounded length. A field that is present and wrong
/// is a ``FieldRefused`` naming it; an absent field (or JSON null) is nil.
extension KeyedDecodingContainer {
    /// An integer field in `range`.
    public func integer(_ key: Key, in range: ClosedRange<Int64>) throws(FieldRefused) -> Int64? {
        guard isPresent(key) else { return nil }
        guard let number = try? decode(Int64.self, forKey: key) else {
            throw FieldRefused(.field, "'\(key.stringValue)' must be an integer, got \(describe(key))")
        }
        guard range.contains(number) else {
            throw FieldRefused(
                .range, "'\(key.stringValue)' must be in \(range.lowerBound)...\(range.upperBound), got \(number)")
        }
        return number
    }

    /// An integer field in `range` that must be there.
    public func requiredInteger(_ key: Key, in range: ClosedRange<Int64>) throws(FieldRefused) -> Int64 {
        guard let number = try integer(key, in: range) else {
            throw FieldRefused(.field, "'\(key.stringValue)' is missing")
        }
        return number
    }

    /// A count (an integer field in `range`, which lies within `Int`).
    public func count(_ key: Key, in range: ClosedRange<Int64>) throws(FieldRefused) -> Int? {
        try integer(key, in: range).map { Int($0) }
    }

    /// A finite number field in `range`.
    public func number(_ key: Key, in range: ClosedRange<Double>) throws(FieldRefused) -> Double? {
        guard isPresent(key) else { return nil }
        guard (try? decode(Bool.self, forKey: key)) == nil, let number = try? decode(Double.self, forKey: key),
            number.isFinite
        else {
            throw FieldRefused(.field, "'\(key.stringValue)' must be a number, got \(describe(key))")
        }
        guard range.contains(number) else {
            throw FieldRefused(
                .range, "'\(key.stringValue)' must be in \(range.lowerBound)...\(range.upperBound), got \(number)")
        }
        return number
    }

    /// A boolean field.
    public func boolean(_ key: Key) throws(FieldRefused) -> Bool? {
        guard isPresent(key) else { return nil }
        guard let value = try? decode(Bool.self, forKey: key) else {
            throw FieldRefused(.field, "'\(key.stringValue)' must be true or false, got \(describe(key))")
        }
        return value
    }

    /// A string field of at most `maxLength` characters.
    public func text(_ key: Key, maxLength: Int) throws(FieldRefused) -> String? {
        guard isPresent(key) else { return nil }
        guard let text = try? decode(String.self, forKey: key) else {
            throw FieldRefused(.field, "'\(key.stringValue)' must be a string, got \(describe(key))")
        }
        guard text.utf8.count <= maxLength * 4, text.count <= maxLength else {
            throw FieldRefused(.range, "'\(key.stringValue)' is longer than \(maxLength) characters")
        }
        return text
    }

    /// A list of at most `maxCount` strings, each of at most `maxLength` characters.
    public func texts(_ key: Key, maxLength: Int, maxCount: Int) throws(FieldRefused) -> [String]? {
        guard isPresent(key) else { return nil }
        guard let texts = try? decode([String].self, forKey: key), texts.count <= maxCount,
            texts.allSatisfy({ $0.count <= maxLength })
        else {
            throw FieldRefused(
                .field,
                "'\(key.stringValue)' must be a list of at most \(maxCount) strings of at most \(maxLength) characters")
        }
        return texts
    }

    /// A nested value, its refusals prefixed with the field's name.
    public func nested<T: Decodable>(_ type: T.Type, _ key: Key) throws(FieldRefused) -> T? {
        guard isPresent(key) else { return nil }
        do {
            return try decode(type, forKey: key)
        } catch let refused as FieldRefused {
            throw FieldRefused(refused.reason, "\(key.stringValue): \(refused.detail)")
        } catch let error as DecodingError {
            let refused = CheckedJSON.refusal(error)
            throw FieldRefused(.field, "'\(key.stringValue)' must be an object (\(refused.detail))")
        } catch {
            throw FieldRefused(.field, "'\(key.stringValue)': \(error)")
        }
    }

    private func isPresent(_ key: Key) -> Bool {
        contains(key) && (try? decodeNil(forKey: key)) == false
    }

    /// A wrong value for an error message: its type, or at most 40 characters of a number.
    private func describe(_ key: Key) -> String {
        if (try? decode(Bool.self, forKey: key)) != nil { return "a boolean" }
        if (try? decode(String.self, forKey: key)) != nil { return "a string" }
        if let number = try? decode(Double.self, forKey: key) { return "'\(String(describing: number).prefix(40))'" }
        if (try? decode([JSONIgnored].self, forKey: key)) != nil { return "a list" }
        return "an object or a number beyond range"
    }
}

/// Any JSON value, read and dropped: a list's elements when only its shape matters.
private struct JSONIgnored: Decodable {
    init(from decoder: any Decoder) throws {}
}

/// A value that is read when it can be and left out when it cannot: one detail of a report must not cost the
/// record it is in (`details` of a host record).
struct Lenient<Value: Decodable>: Decodable {
    var value: Value?

    init(from decoder: any Decoder) throws {
        value = try? Value(from: decoder)
    }
}

/// Coding keys named by their strings, for records whose fields are read by name.
public struct FieldName: CodingKey, ExpressibleByStringLiteral, Hashable, Sendable {
    public let stringValue: String
    public var intValue: Int? { nil }

    public init(stringValue: String) { self.stringValue = stringValue }
    public init?(intValue: Int) { nil }
    public init(stringLiteral value: String) { stringValue = value }
}
