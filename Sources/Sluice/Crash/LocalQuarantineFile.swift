import Foundation
import Logging
import SluiceKafka
import Synchronization

/// Where quarantines are kept when the control plane is off: a JSON file in the state directory (one host;
/// a partition that moves to another host does not take them along), naming the cluster and group its
/// quarantines belong to: `{"cluster": "…", "group": "…", "quarantines": {"orders/3": {…}}}`.
final class LocalQuarantineFile: Sendable {
    let path: String
    /// Whose quarantines these are; nil when there is no file and nothing was recorded yet (then nothing can
    /// be written either: every write follows a finding or an entry, which come with the owner).
    let owner: StateOwner?
    private let entries: Mutex<[TopicPartition: Quarantine]>

    /// Reads the file (missing: empty). A file of another cluster or group, or one that names none (written
    /// before files did), is renamed `quarantines.json.set-aside-MILLISECONDS` with a warning and nothing of it
    /// applies. A file of this owner that cannot be read is an error naming it: starting without the
    /// quarantines it holds could kill the process again.
    init(directory: String, owner: StateOwner?, logger: Logger) throws(SluiceError) {
        let path = "\(directory)/quarantines.json"
        self.path = path
        self.owner = owner
        guard FileManager.default.fileExists(atPath: path) else {
            entries = Mutex([:])
            return
        }
        func bad(_ reason: String) -> SluiceError {
            SluiceError(code: .invalidInput, message: "quarantine file \(path): \(reason); fix or remove it")
        }
        guard let data = FileManager.default.contents(atPath: path),
            let file = try? JSONDecoder().decode(FileHeader.self, from: data)
        else { throw bad("not a JSON object") }
        let fileOwner = file.cluster.flatMap { cluster in file.group.map { StateOwner(cluster: cluster, group: $0) } }
        guard let owner, fileOwner == owner else {
            let setAside = "\(path).set-aside-\(Int64(Date().timeIntervalSince1970 * 1000))"
            do {
                try FileManager.default.moveItem(atPath: path, toPath: setAside)
            } catch {
                throw bad(
                    "it belongs to \(fileOwner.map { "\($0)" } ?? "no named cluster and group"), not to this host's \(owner.map { "\($0)" } ?? "cluster"), and could not be set aside (\(error))"
                )
            }
            logger.warning(
                "the quarantine file belongs to another cluster or group: set aside, none of its quarantines applies",
                metadata: [
                    "sluice.file": "\(setAside)", "sluice.fileOwner": "\(fileOwner.map { "\($0)" } ?? "none named")",
                    "sluice.owner": "\(owner.map { "\($0)" } ?? "-")",
                ])
            entries = Mutex([:])
            return
        }
        let quarantines: [String: Quarantine]
        do {
            quarantines = try CheckedJSON.decode(FileContent.self, from: data).quarantines
        } catch {
            throw bad(error.detail)
        }
        var loaded: [TopicPartition: Quarantine] = [:]
        for (key, quarantine) in quarantines {
            if let topicPartition = TopicPartition(parsing: key) { loaded[topicPartition] = quarantine }
        }
        for (topicPartition, quarantine) in loaded {
            if let problem = quarantine.releaseProblem(over: nil) { throw bad("\(topicPartition): \(problem)") }
        }
        entries = Mutex(loaded)
    }

    var all: [TopicPartition: Quarantine] { entries.withLock { $0 } }

    /// Sets one entry (nil removes it) and rewrites the file atomically.
    func set(_ topicPartition: TopicPartition, _ quarantine: Quarantine?) throws {
        guard let owner else {
            throw SluiceError(
                code: .state,
                message: "quarantine file \(path): which cluster it belongs to is not known; nothing is written")
        }
        let snapshot = entries.withLock { entries in
            entries[topicPartition] = quarantine
            return entries
        }
        let file = FileContent(
            cluster: owner.cluster, group: owner.group,
            quarantines: Dictionary(uniqueKeysWithValues: snapshot.map { ($0.key.description, $0.value) }))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try encoder.encode(file).write(to: URL(fileURLWithPath: path), options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
    }
}

extension LocalQuarantineFile {
    /// Whose file it is, read before anything else: a file of another owner is set aside unread.
    struct FileHeader: Decodable {
        var cluster: String?
        var group: String?

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: FieldName.self)
            cluster = try? fields.text("cluster", maxLength: InputLimits.identityLength)
            group = try? fields.text("group", maxLength: InputLimits.identityLength)
        }
    }

    /// The file: its owner and its quarantines by `TOPIC/PARTITION`, each checked as a control record is.
    struct FileContent: Codable {
        var cluster: String
        var group: String
        var quarantines: [String: Quarantine]

        init(cluster: String, group: String, quarantines: [String: Quarantine]) {
            self.cluster = cluster
            self.group = group
            self.quarantines = quarantines
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: CodingKeys.self)
            cluster = try fields.text(.cluster, maxLength: InputLimits.identityLength) ?? ""
            group = try fields.text(.group, maxLength: InputLimits.identityLength) ?? ""
            guard fields.contains(.quarantines),
                let table = try? fields.nestedContainer(keyedBy: FieldName.self, forKey: .quarantines)
            else {
                throw FieldRefused(.field, "'quarantines' is not an object of TOPIC/PARTITION keys")
            }
            quarantines = [:]
            for key in table.allKeys {
                guard TopicPartition(parsing: key.stringValue) != nil else {
                    throw FieldRefused(.key, "'\(key.stringValue.prefix(200))' is not TOPIC/PARTITION")
                }
                quarantines[key.stringValue] = try table.nested(Quarantine.self, key)
            }
        }
    }
}
