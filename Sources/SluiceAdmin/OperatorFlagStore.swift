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
            guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                let entries = object["flags"] as? [[String: Any]]
            else { throw SluiceError(code: .configuration, message: "expected {\"flags\": [...]}") }
            if let fileGroup = object["group"] {
                guard let fileGroup = fileGroup as? String, fileGroup == group else {
                    let setAside = "\(path).set-aside-\(Int64(Date().timeIntervalSince1970 * 1000))"
                    try FileManager.default.moveItem(atPath: path, toPath: setAside)
                    logger.warning(
                        "the admin state file belongs to another consumer group: set aside, none of its overrides applies",
                        metadata: [
                            "sluice.file": "\(setAside)",
                            "sluice.fileGroup": "\(String(describing: fileGroup).prefix(256))",
                            "kafka.group": "\(group)",
                        ])
                    return [:]
                }
            }
            var flags: [FlagKey: FlagSetting] = [:]
            for (index, entry) in entries.enumerated() {
                // Validated like the configuration: the host wrote this file, but it is a file from outside the
                // process all the same (edited, corrupted, or left by another version).
                let fields = JSONFields(entry) { _, detail in
                    SluiceError(code: .configuration, message: "flag \(index + 1): \(detail)")
                }
                guard let keyText = try fields.string("key", maxLength: InputLimits.identityLength),
                    let enabled = entry["enabled"] as? Bool,
                    JSONFields.isBoolean(entry["enabled"]!)
                else {
                    throw SluiceError(
                        code: .configuration,
                        message: "flag \(index + 1): each flag needs \"key\" and \"enabled\" (true or false)")
                }
                let rate = try fields.double("rate", in: 0...1_000_000)
                if let rate, ControlRecord.parseRate(ControlRecord.describeRate(rate)) == nil {
                    throw SluiceError(
                        code: .configuration,
                        message:
                            "flag \(index + 1): \"rate\" must be from 0.001 to 1000000 messages a second, got \(rate)")
                }
                flags[try FlagKey(parsing: keyText)] = FlagSetting(
                    enabled: enabled, source: "admin",
                    reason: try fields.string("reason", maxLength: InputLimits.textLength), rate: rate)
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
        let entries: [[String: Any]] = flags.sorted { $0.key < $1.key }.map { key, setting in
            var entry: [String: Any] = ["key": key.description, "enabled": setting.enabled]
            if let reason = setting.reason { entry["reason"] = reason }
            if let rate = setting.rate { entry["rate"] = rate }
            return entry
        }
        let data = try JSONSerialization.data(
            withJSONObject: ["group": group, "flags": entries] as [String: Any], options: [.sortedKeys, .prettyPrinted])
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
    }
}
