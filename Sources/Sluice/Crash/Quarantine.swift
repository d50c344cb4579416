import Foundation
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
            throw SluiceError(code: .invalidInput, message: "the quarantine of \(topicPartition) is at offset \(self.offset), not \(offset)")
        }
        var released = self
        switch release {
        case .retry: return nil
        case .skip: released.state = .skip
        case .deadLetter: released.state = .deadLetter
        }
        released.who = who
        released.reason = reason
        return released
    }

    /// The offsets it covers.
    public var range: Range<Int64> { offset..<(offset + Int64(max(1, count))) }

    /// What it says, for logs, status and crash reasons.
    public var summary: String {
        if state == .suspect {
            return "offsets \(offset)..<\(offset + Int64(count)) were in handler calls when the process died (\(signal), on \(host)) on a thread Sluice could not attribute: handled one at a time until the culprit is found"
        }
        let what = count == 1 ? "offset \(offset)" : "offsets \(offset)..<\(offset + Int64(count))"
        return "handler call at \(what) killed the process \(crashes) time\(crashes == 1 ? "" : "s") (\(signal), last on \(host))"
    }

    func object() -> [String: Any] {
        var object: [String: Any] = [
            "v": ControlRecord.version, "state": state.rawValue, "offset": offset, "count": count, "crashes": crashes,
            "signal": signal, "host": host, "atMillis": atMilliseconds,
        ]
        if let who { object["who"] = who }
        if let reason { object["reason"] = reason }
        if let report { object["report"] = report }
        return object
    }

    init(object: [String: Any], bad: (String) -> SluiceError) throws(SluiceError) {
        guard let stateText = object["state"] as? String, let state = State(rawValue: stateText) else {
            throw bad("state must be counting, quarantined, skip, suspect or released, got \((object["state"] as? String).map { "'\($0)'" } ?? "none")")
        }
        guard let offset = (object["offset"] as? NSNumber)?.int64Value, offset >= 0 else { throw bad("a quarantine needs its offset") }
        let count = (object["count"] as? NSNumber)?.intValue ?? 1
        let crashes = (object["crashes"] as? NSNumber)?.intValue ?? 1
        guard count >= 1, crashes >= 0 else { throw bad("count must be at least 1 and crashes 0 or more") }
        self.init(
            offset: offset, count: count, crashes: crashes, state: state, signal: object["signal"] as? String ?? "?",
            host: object["host"] as? String ?? "?", atMilliseconds: (object["atMillis"] as? NSNumber)?.int64Value ?? 0,
            who: object["who"] as? String, reason: object["reason"] as? String)
        report = object["report"] as? String
    }
}

/// Where quarantines are kept when the control plane is off: a JSON file in the state directory (one host;
/// a partition that moves to another host does not take them along).
final class LocalQuarantineFile: Sendable {
    let path: String
    private let entries: Mutex<[TopicPartition: Quarantine]>

    /// Reads the file (missing: empty). A file that cannot be read is an error naming it: starting without
    /// the quarantines it holds could kill the process again.
    init(directory: String) throws(SluiceError) {
        let path = "\(directory)/quarantines.json"
        self.path = path
        guard FileManager.default.fileExists(atPath: path) else {
            entries = Mutex([:])
            return
        }
        func bad(_ reason: String) -> SluiceError {
            SluiceError(code: .invalidInput, message: "quarantine file \(path): \(reason); fix or remove it")
        }
        guard let data = FileManager.default.contents(atPath: path),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: [String: Any]]
        else { throw bad("not a JSON object of TOPIC/PARTITION keys") }
        var loaded: [TopicPartition: Quarantine] = [:]
        for (key, value) in object {
            guard let topicPartition = TopicPartition(parsing: key) else { throw bad("'\(key)' is not TOPIC/PARTITION") }
            loaded[topicPartition] = try Quarantine(object: value) { bad("\(key): \($0)") }
        }
        entries = Mutex(loaded)
    }

    var all: [TopicPartition: Quarantine] { entries.withLock { $0 } }

    /// Sets one entry (nil removes it) and rewrites the file atomically.
    func set(_ topicPartition: TopicPartition, _ quarantine: Quarantine?) throws {
        let snapshot = entries.withLock { entries in
            entries[topicPartition] = quarantine
            return entries
        }
        let object = Dictionary(uniqueKeysWithValues: snapshot.map { ("\($0.key.topic)/\($0.key.partition)", $0.value.object()) })
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

extension TopicPartition {
    /// Parses `topic/partition` (a Kafka topic name, a partition 0 or more).
    public init?(parsing text: String) {
        guard let slash = text.lastIndex(of: "/"), let partition = Int32(text[text.index(after: slash)...]), partition >= 0 else { return nil }
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
