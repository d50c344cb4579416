import Foundation
import SluiceKafka

/// A file of librdkafka properties, as Kafka's own tools take them (`client.properties`): `NAME=VALUE` per
/// line, `#` and `!` comments, blank lines. Secrets go there instead of the command line, where `ps` and shell
/// histories show them. The file is input from outside the process: its size and every line are checked, and
/// an error names the file and line, never a value.
enum KafkaPropertiesFile {
    /// The largest file read.
    static let maximumBytes = 1 << 20

    static func read(_ path: String) throws -> [String: String] {
        let url = URL(fileURLWithPath: path)
        let attributes: [FileAttributeKey: Any]
        do {
            attributes = try FileManager.default.attributesOfItem(atPath: path)
        } catch {
            throw ValidationFailure("properties file \(path) cannot be read: \(error.localizedDescription)")
        }
        guard attributes[.type] as? FileAttributeType == .typeRegular, let size = attributes[.size] as? Int,
            size <= maximumBytes
        else {
            throw ValidationFailure("properties file \(path) is not a regular file of at most \(maximumBytes) bytes")
        }
        guard let data = try? Data(contentsOf: url), let text = String(data: data, encoding: .utf8) else {
            throw ValidationFailure("properties file \(path) is not UTF-8 text")
        }
        return try parse(text, path: path)
    }

    static func parse(_ text: String, path: String) throws -> [String: String] {
        var properties: [String: String] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces.union(CharacterSet(charactersIn: "\r")))
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix("!") { continue }
            guard let equals = line.firstIndex(of: "=") else {
                throw ValidationFailure("properties file \(path), line \(index + 1): expected NAME=VALUE")
            }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, name.count <= 256,
                name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-_".contains($0)) })
            else {
                throw ValidationFailure(
                    "properties file \(path), line \(index + 1): '\(name.prefix(64))' is not a librdkafka property name"
                )
            }
            properties[name] = value
        }
        return properties
    }

    /// An error in a properties file, naming where (and never a value).
    struct ValidationFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
