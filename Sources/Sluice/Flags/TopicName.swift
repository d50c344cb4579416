/// Kafka's rules for topic names, shared by flag keys, the configuration and the admin API.
enum TopicName {
    /// The longest topic name Kafka accepts.
    static let maximumLength = 249

    /// Why `name` is not a Kafka topic name, or nil when it is one.
    static func problem(_ name: String) -> String? {
        if name.isEmpty { return "a topic name cannot be empty" }
        if name.utf8.count > maximumLength {
            return "a topic name has at most \(maximumLength) characters, got \(name.utf8.count)"
        }
        if name == "." || name == ".." { return "'.' and '..' are not topic names" }
        let allowed = name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: ".")
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
        return allowed ? nil : "not a Kafka topic name: only letters, digits, '.', '_' and '-' are allowed"
    }

    /// `text` for an error message: control characters escaped, cut after 64 characters.
    static func quoted(_ text: String) -> String {
        var result = ""
        for scalar in text.unicodeScalars.prefix(64) {
            switch scalar {
            case "\0": result += "\\0"
            case "\n": result += "\\n"
            case "\t": result += "\\t"
            case "\r": result += "\\r"
            default:
                result +=
                    scalar.properties.generalCategory == .control || scalar.properties.generalCategory == .format
                    ? "\\u{\(String(scalar.value, radix: 16))}" : String(scalar)
            }
        }
        if text.unicodeScalars.count > 64 { result += "…" }
        return "'\(result)'"
    }
}
