import Foundation
import Logging
import SluiceKafka
import Synchronization

/// A message whose handler call killed the process (docs/architecture.md §12): its deaths counted and, at its topic's
/// `onCrash.after`, quarantined. Kept group-wide in the control plane (`quarantine/TOPIC/PARTITION`) so it
/// follows the partition to any host; in the state directory when the control plane is off.
public struct Quarantine: Sendable, Hashable {
    /// What the shard does at the message.
    public enum State: String, Sendable, Hashable, CaseIterable {
        /// Deaths are counted; the handler is still called (below `onCrash.after`).
        case counting
        /// The topic's `onCrash.then` applies: the shard is held there, or the message is dead-lettered.
        case quarantined
        /// An operator released it: it is committed without a handler call.
        case skip
        /// An operator released it to the topic's dead-letter topic (with its crash report), without a handler
        /// call.
        case deadLetter
        /// The offsets were in handler calls when the process died on a thread Sluice could not tell: they
        /// are handled one at a time, host-wide, so a second death names the culprit.
        case suspect
    }

    /// The first offset of the handler call that died.
    public var offset: Int64
    /// The timestamp of the message at ``offset`` when its call died (ms since the epoch; nil when it had none,
    /// or for a record written before quarantines carried it). A message at that offset with another timestamp
    /// is another message (the topic was deleted and recreated): the quarantine is set aside for it, never applied.
    public var messageTimestamp: Int64?
    /// Messages in that call (1, or a batch).
    public var count: Int
    /// Process deaths attributed to it.
    public var crashes: Int
    /// What the shard does at the message.
    public var state: State
    /// The fatal signal, `SIGILL` and so on.
    public var signal: String
    /// The host whose process died last, and when (ms since the epoch).
    public var host: String
    /// When that process died, in milliseconds since the epoch.
    public var atMilliseconds: Int64
    /// Who released it and why, for `skip`.
    public var who: String?
    /// Why it was released.
    public var reason: String?
    /// The crash report of the last death (the runtime's backtrace, summarized and truncated), when the
    /// process wrote one (`SWIFT_BACKTRACE=...,format=json,output-to=STATE_DIRECTORY`).
    public var report: String?
    /// For an operator's release (`skip`, `deadLetter`): the quarantine a host recorded that it releases. A
    /// release applies only within what a host recorded, never to offsets it names by itself; the record carries
    /// it because compaction keeps only the latest record of a partition, the release.
    public var recorded: Recorded?

    /// What a host recorded of a message that killed its process: the part of a quarantine a release refers to.
    public struct Recorded: Sendable, Hashable {
        /// The first offset and the number of messages the host recorded.
        public var offset: Int64
        public var count: Int
        /// Its state then: `counting`, `quarantined` or `suspect`.
        public var state: State
        /// The host that recorded it, and when its process died.
        public var host: String
        public var atMilliseconds: Int64
    }

    /// Whether a host records this state (an operator writes `skip` and `deadLetter`).
    public var isRecordedByHost: Bool { [.counting, .quarantined, .suspect].contains(state) }

    /// Creates a quarantine record.
    public init(
        offset: Int64, count: Int = 1, crashes: Int, state: State, signal: String, host: String, atMilliseconds: Int64,
        who: String? = nil, reason: String? = nil
    ) {
        self.offset = offset
        self.count = count
        self.crashes = crashes
        self.state = state
        self.signal = signal
        self.host = host
        self.atMilliseconds = atMilliseconds
        self.who = who
        self.reason = reason
    }

    /// How an operator releases a quarantined message.
    public enum Release: String, Sendable, CaseIterable {
        /// The handler is called with it again (after a fix was deployed).
        case retry
        /// It is committed without a handler call.
        case skip
        /// It goes to the topic's dead-letter topic with its crash report, without a handler call.
        case deadLetter
    }

    /// What an operator's release writes: for `skip` and `deadLetter`, this quarantine in that state with who
    /// and why; for `retry`, nil (released, tried again). Throws when `offset` is given and is not the
    /// quarantined one.
    public func released(
        _ release: Release, offset: Int64?, who: String?, reason: String?, of topicPartition: TopicPartition
    ) throws(SluiceError) -> Quarantine? {
        if let offset, offset != self.offset {
            throw SluiceError(
                code: .invalidInput,
                message: "the quarantine of \(topicPartition) is at offset \(self.offset), not \(offset)")
        }
        var released = self
        if isRecordedByHost {
            released.recorded = Recorded(
                offset: self.offset, count: count, state: state, host: host, atMilliseconds: atMilliseconds)
        }
        switch release {
        case .retry: return nil
        case .skip: released.state = .skip
        case .deadLetter: released.state = .deadLetter
        }
        released.who = who
        released.reason = reason
        return released
    }

    /// Why this record cannot stand over `current` (the partition's record before it), or nil when it can. A
    /// host's own record always can. A release must name the host record it releases, cover no offset outside
    /// it, and, when the host record is still known, be that one.
    public func releaseProblem(over current: Quarantine?) -> String? {
        guard !isRecordedByHost else { return nil }
        guard let recorded else {
            return "a \(state.rawValue) release names no quarantine a host recorded; it is applied to no offset"
        }
        guard recorded.state != .skip, recorded.state != .deadLetter else {
            return "a release must name a quarantine a host recorded"
        }
        let recordedRange = recorded.offset..<recorded.offset.adding(saturating: Int64(max(1, recorded.count)))
        guard offset == recorded.offset, range.upperBound <= recordedRange.upperBound else {
            return
                "the release covers offsets \(offset)..<\(range.upperBound), outside the quarantine a host recorded (\(recordedRange.lowerBound)..<\(recordedRange.upperBound))"
        }
        if let current, current.isRecordedByHost,
            current.offset != recorded.offset || current.count != recorded.count || current.host != recorded.host
                || current.atMilliseconds != recorded.atMilliseconds
        {
            return
                "the release names a quarantine at offset \(recorded.offset) (host \(recorded.host)), but the partition's quarantine is at offset \(current.offset) (host \(current.host))"
        }
        if let current, !current.isRecordedByHost, let currentRecorded = current.recorded, currentRecorded != recorded {
            return "the release names another quarantine than the one already released"
        }
        return nil
    }

    /// The offsets it covers.
    public var range: Range<Int64> { offset..<offset.adding(saturating: Int64(max(1, count))) }

    /// Whether the message at ``offset`` with `timestamp` can be the one this quarantine recorded: false
    /// when both timestamps are known and differ (another message at the same offset of a recreated topic).
    public func isOfMessage(timestamp: Int64?) -> Bool {
        guard let messageTimestamp, let timestamp else { return true }
        return messageTimestamp == timestamp
    }

    /// What it says, for logs, status and crash reasons.
    public var summary: String {
        if state == .suspect {
            return
                "offsets \(offset)..<\(range.upperBound) were in handler calls when the process died (\(signal), on \(host)) on a thread Sluice could not attribute: handled one at a time until the culprit is found"
        }
        let what = count == 1 ? "offset \(offset)" : "offsets \(offset)..<\(range.upperBound)"
        return
            "handler call at \(what) killed the process \(crashes) time\(crashes == 1 ? "" : "s") (\(signal), last on \(host))"
    }

    func object() -> [String: Any] {
        var object: [String: Any] = [
            "v": ControlRecord.version, "state": state.rawValue, "offset": offset, "count": count, "crashes": crashes,
            "signal": signal, "host": host, "atMillis": atMilliseconds,
        ]
        if let who { object["who"] = who }
        if let reason { object["reason"] = reason }
        if let messageTimestamp { object["messageTs"] = messageTimestamp }
        if let report { object["report"] = report }
        if let recorded {
            object["recorded"] =
                [
                    "offset": recorded.offset, "count": recorded.count, "state": recorded.state.rawValue,
                    "host": recorded.host,
                    "atMillis": recorded.atMilliseconds,
                ] as [String: Any]
        }
        return object
    }

    /// Reads a quarantine's fields, each checked against ``InputLimits`` (a record or file from outside the process).
    init(fields: JSONFields, bad: @escaping (ControlRecordRejected.Reason, String) -> any Error) throws {
        guard let stateText = try fields.string("state", maxLength: 32), let state = State(rawValue: stateText) else {
            throw bad(
                .field,
                "state must be counting, quarantined, skip, deadLetter, suspect or released, got \((fields.object["state"] as? String).map { "'\($0.prefix(32))'" } ?? "none")"
            )
        }
        guard let offset = try fields.int64("offset", in: InputLimits.offsets) else {
            throw bad(.field, "a quarantine needs its offset")
        }
        self.init(
            offset: offset, count: try fields.int("count", in: InputLimits.quarantineSpan) ?? 1,
            crashes: try fields.int("crashes", in: InputLimits.counts) ?? 1, state: state,
            signal: try fields.string("signal", maxLength: InputLimits.identityLength) ?? "?",
            host: try fields.string("host", maxLength: InputLimits.identityLength) ?? "?",
            atMilliseconds: try fields.int64("atMillis", in: InputLimits.epochMilliseconds) ?? 0,
            who: try fields.string("who", maxLength: InputLimits.identityLength),
            reason: try fields.string("reason", maxLength: InputLimits.textLength))
        report = try fields.string("report", maxLength: InputLimits.reportLength)
        messageTimestamp = try fields.int64("messageTs", in: InputLimits.epochMilliseconds)
        if let object = try fields.object("recorded") {
            let nested = JSONFields(object) { bad($0, "recorded: \($1)") }
            guard let stateText = try nested.string("state", maxLength: 32), let state = State(rawValue: stateText)
            else {
                throw bad(.field, "recorded: 'state' must be counting, quarantined or suspect")
            }
            recorded = Recorded(
                offset: try nested.requiredInt64("offset", in: InputLimits.offsets),
                count: try nested.int("count", in: InputLimits.quarantineSpan) ?? 1,
                state: state, host: try nested.string("host", maxLength: InputLimits.identityLength) ?? "?",
                atMilliseconds: try nested.int64("atMillis", in: InputLimits.epochMilliseconds) ?? 0)
        }
    }
}

/// The Kafka cluster and consumer group a host's state on disk belongs to. State of another owner (a state
/// directory reused against another cluster, or by another group) is set aside, never applied.
struct StateOwner: Sendable, Hashable, CustomStringConvertible {
    /// The cluster id its brokers report.
    var cluster: String
    /// The consumer group (`kafka.group`).
    var group: String

    var description: String { "cluster \(cluster), group \(group)" }
}

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
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { throw bad("not a JSON object") }
        let fileOwner = (object["cluster"] as? String).flatMap { cluster in
            (object["group"] as? String).map { StateOwner(cluster: cluster, group: $0) }
        }
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
        guard let quarantines = object["quarantines"] as? [String: [String: Any]] else {
            throw bad("'quarantines' is not an object of TOPIC/PARTITION keys")
        }
        var loaded: [TopicPartition: Quarantine] = [:]
        for (key, value) in quarantines {
            guard let topicPartition = TopicPartition(parsing: key) else {
                throw bad("'\(key)' is not TOPIC/PARTITION")
            }
            do {
                loaded[topicPartition] = try Quarantine(
                    fields: JSONFields(value) { _, detail in bad("\(key): \(detail)") }
                ) { _, detail in bad("\(key): \(detail)") }
            } catch let error as SluiceError {
                throw error
            } catch {
                throw bad("\(key): \(error)")
            }
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
        let quarantines = Dictionary(
            uniqueKeysWithValues: snapshot.map { ("\($0.key.topic)/\($0.key.partition)", $0.value.object()) })
        let object: [String: Any] = ["cluster": owner.cluster, "group": owner.group, "quarantines": quarantines]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
    }
}

extension TopicPartition {
    /// Parses `topic/partition` (a Kafka topic name, a partition 0 or more).
    public init?(parsing text: String) {
        guard let slash = text.lastIndex(of: "/"), let partition = Int32(text[text.index(after: slash)...]),
            partition >= 0
        else { return nil }
        let topic = String(text[..<slash])
        guard TopicName.problem(topic) == nil else { return nil }
        self.init(topic, partition)
    }
}

/// The error a quarantined message is dead-lettered with: its handler call killed the process.
public struct MessageKilledProcess: Error, Sendable, CustomStringConvertible {
    /// The quarantine the message is under.
    public let quarantine: Quarantine
    /// `quarantined: ` and the quarantine's summary (the `sluice.error` header).
    public var description: String { "quarantined: \(quarantine.summary)" }
}
