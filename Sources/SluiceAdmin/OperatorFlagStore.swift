import Foundation
import Logging
import Sluice

/// Keeps operator flag overrides in a JSON file, so a restart keeps an incident's override:
/// `{"group": "orders-service", "flags": [{"key": "orders/3", "enabled": false, "reason": "incident 42"}]}`.
///
/// The file names the consumer group it belongs to: a file of another group (a state directory or volume reused
/// by another service) is set aside, never applied. A file naming no group (written before files did) is
/// applied and from then on written with it: its overrides were this host's, and dropping them at an upgrade
/// would turn an incident's `off` back on. (Flags name topics and partitions, not offsets: a flag of another
/// cluster applied here stops at most what it names, visibly; quarantines, which name offsets, are also bound to
/// the cluster.)
struct OperatorFlagStore: Sendable {
    let path: String
    /// The consumer group whose overrides these are (`kafka.group`).
    let group: String

    /// The saved overrides; none when the file does not exist or is another group's (then renamed
    /// `PATH.set-aside-MILLISECONDS`, with a warning from `logger`).
    func load(logger: Logger) throws -> [FlagKey: FlagSetting] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            let owner: FileOwner
            do {
                owner = try CheckedJSON.decode(FileOwner.self, from: data)
            } catch {
                throw SluiceError(code: .configuration, message: "expected {\"flags\": [...]}")
            }
            if owner.isOtherGroup(than: group) {
                let setAside = "\(path).set-aside-\(Int64(Date().timeIntervalSince1970 * 1000))"
                try FileManager.default.moveItem(atPath: path, toPath: setAside)
                logger.warning(
                    "the admin state file belongs to another consumer group: set aside, none of its overrides applies",
                    metadata: [
                        "sluice.file": "\(setAside)", "sluice.fileGroup": "\(owner.group ?? "(not a name)")",
                        "kafka.group": "\(group)",
                    ])
                return [:]
            }
            let file: FileContent
            do {
                file = try CheckedJSON.decode(FileContent.self, from: data)
            } catch {
                throw SluiceError(code: .configuration, message: error.detail)
            }
            var flags: [FlagKey: FlagSetting] = [:]
            for (index, entry) in file.flags.enumerated() {
                do {
                    flags[try FlagKey(parsing: entry.key)] = FlagSetting(
                        enabled: entry.enabled, source: "admin", reason: entry.reason, rate: entry.rate)
                } catch {
                    throw SluiceError(
                        code: .configuration,
                        message: "flag \(index + 1): \((error as? SluiceError)?.message ?? "\(error)")")
                }
            }
            return flags
        } catch let error as SluiceError {
            throw SluiceError(code: .configuration, message: "\(path): operator flag state: \(error.message)")
        } catch {
            throw SluiceError(
                code: .configuration,
                message: "\(path): operator flag state cannot be read: \(error.localizedDescription)")
        }
    }

    /// Replaces the file atomically with `flags`.
    func save(_ flags: [FlagKey: FlagSetting]) throws {
        let file = FileContent(
            group: group,
            flags: flags.sorted { $0.key < $1.key }.map { key, setting in
                FileContent.Entry(
                    key: key.description, enabled: setting.enabled, rate: setting.rate, reason: setting.reason)
            })
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data = try encoder.encode(file)
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
    }

    /// Whose file it is, read first: a file of another group is set aside unread.
    struct FileOwner: Decodable {
        /// Whether the file names a group at all.
        var named: Bool
        /// The group it names, when that is a name.
        var group: String?

        func isOtherGroup(than group: String) -> Bool { named && self.group != group }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: FieldName.self)
            named = fields.contains("group")
            group = try? fields.text("group", maxLength: InputLimits.identityLength)
        }
    }

    /// The file: `{"group": "…", "flags": [{"key": "orders/3", "enabled": false, "reason": "…", "rate": 200}]}`.
    /// Validated like the configuration: the host wrote it, but it is a file from outside the process all the
    /// same (edited, corrupted, or left by another version).
    struct FileContent: Codable {
        struct Entry: Codable {
            var key: String
            var enabled: Bool
            var rate: Double?
            var reason: String?

            init(key: String, enabled: Bool, rate: Double?, reason: String?) {
                self.key = key
                self.enabled = enabled
                self.rate = rate
                self.reason = reason
            }

            init(from decoder: any Decoder) throws {
                let fields = try decoder.container(keyedBy: CodingKeys.self)
                guard let key = try fields.text(.key, maxLength: InputLimits.identityLength),
                    let enabled = try? fields.boolean(.enabled)
                else {
                    throw FieldRefused(.field, #"each flag needs "key" and "enabled" (true or false)"#)
                }
                self.init(
                    key: key, enabled: enabled, rate: try fields.number(.rate, in: 0...1_000_000),
                    reason: try fields.text(.reason, maxLength: InputLimits.textLength))
                if let rate, ControlRecord.parseRate(ControlRecord.describeRate(rate)) == nil {
                    throw FieldRefused(
                        .range, "\"rate\" must be from 0.001 to 1000000 messages a second, got \(rate)")
                }
            }
        }

        var group: String?
        var flags: [Entry]

        init(group: String, flags: [Entry]) {
            self.group = group
            self.flags = flags
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: CodingKeys.self)
            group = try? fields.text(.group, maxLength: InputLimits.identityLength)
            guard fields.contains(.flags), var list = try? fields.nestedUnkeyedContainer(forKey: .flags) else {
                throw FieldRefused(.field, "expected {\"flags\": [...]}")
            }
            flags = []
            while !list.isAtEnd {
                let index = list.currentIndex
                do {
                    flags.append(try list.decode(Entry.self))
                } catch let refused as FieldRefused {
                    throw FieldRefused(refused.reason, "flag \(index + 1): \(refused.detail)")
                } catch {
                    throw FieldRefused(.field, "flag \(index + 1) must be an object")
                }
            }
        }
    }
}
