import Yams

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Flags from a YAML or JSON file: a top-level map from key to `on` / `off` (or `true` / `false`), e.g.
///
/// ```yaml
/// orders: off
/// "orders/3": off
/// payments: 200/s   # a rate: slowed to 200 messages a second per shard, not stopped
/// "*": on
/// ```
///
/// Polled by the resolver every poll interval. A missing, empty or malformed file throws an error with the
/// line and column, and the resolver keeps the last good flags; `{}` is the file with no flags. Replace the
/// file atomically (write a new file, then rename it over the old one) so a poll never sees it half written.
public struct FileFlagSource: FlagSource {
    /// The file.
    public let path: String
    public var name: String { "file" }
    public var changes: AsyncStream<Void>? { nil }

    /// Creates a source reading `path`.
    public init(path: String) { self.path = path }

    public func load() async throws -> [FlagKey: FlagSetting] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw SluiceError(
                code: .configuration, message: "\(path): cannot read the flag file: \(error.localizedDescription)")
        }
        return try Self.parse(text, file: path)
    }

    static func parse(_ text: String, file: String) throws -> [FlagKey: FlagSetting] {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw SluiceError(code: .configuration, message: "\(file): not valid YAML or JSON: \(error)")
        }
        // A file being rewritten in place (`echo ... > flags.yaml`) is empty for a moment: that is a failed
        // read, never "no flags" (which is `{}`).
        guard let root else {
            throw SluiceError(
                code: .configuration,
                message:
                    "\(file): the flag file is empty (a file being rewritten in place?); write {} for no flags, and replace the file atomically (write a new file, then rename it over)"
            )
        }
        guard let mapping = root.mapping else {
            throw SluiceError(
                code: .configuration, message: "\(location(file, root.mark)): expected a map from flag key to on or off"
            )
        }
        var flags: [FlagKey: FlagSetting] = [:]
        for (keyNode, valueNode) in mapping {
            let keyText = keyNode.string ?? ""
            let key: FlagKey
            do {
                key = try FlagKey(parsing: keyText)
            } catch let error as SluiceError {
                throw SluiceError(code: .configuration, message: "\(location(file, keyNode.mark)): \(error.message)")
            }
            // A rate flag runs the shards, slowed to that many messages a second each.
            guard let setting = FlagSetting(parsing: valueNode.scalar?.string ?? "", source: "file") else {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "\(location(file, valueNode.mark)): flag '\(keyText)': expected on, off or a rate such as 200/s, got '\(valueNode.scalar?.string ?? "a list or map")'"
                )
            }
            flags[key] = setting
        }
        return flags
    }

    private static func location(_ file: String, _ mark: Mark?) -> String {
        mark.map { "\(file):\($0.line):\($0.column)" } ?? file
    }
}
