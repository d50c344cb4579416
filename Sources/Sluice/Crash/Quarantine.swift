import Foundation
import Logging
import SluiceKafka
import Synchronization

/// A message whose handler call killed the process (docs/architecture.md §12): its deaths counted and, at its topic's
/// `onCrash.after`, quarantined. Kept group-wide in the control plane (`quarantine/TOPIC/PARTITION`) so it
/// follows the partition to any host; in the state directory when the control plane is off.
public struct Quarantine: Codable, Sendable, Hashable {
    /// What the shard does at the message.
    public enum State: String, Codable, Sendable, Hashable, CaseIterable {
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
    public struct Recorded: Codable, Sendable, Hashable {
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

    enum CodingKeys: String, CodingKey {
        case offset, count, crashes, state, signal, host, who, reason, report, recorded
        case messageTimestamp = "messageTs"
        case atMilliseconds = "atMillis"
    }

    /// Reads a quarantine's fields, each checked against ``InputLimits`` (a record or file from outside the process).
    public init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: CodingKeys.self)
        let stateText = try fields.text(.state, maxLength: InputLimits.identityLength)
        guard let state = stateText.flatMap(State.init(rawValue:)) else {
            throw FieldRefused(
                .field,
                "state must be counting, quarantined, skip, deadLetter, suspect or released, got \(stateText.map { "'\($0.prefix(32))'" } ?? "none")"
            )
        }
        guard let offset = try fields.integer(.offset, in: InputLimits.offsets) else {
            throw FieldRefused(.field, "a quarantine needs its offset")
        }
        self.init(
            offset: offset, count: try fields.count(.count, in: InputLimits.quarantineSpan) ?? 1,
            crashes: try fields.count(.crashes, in: InputLimits.counts) ?? 1, state: state,
            signal: try fields.text(.signal, maxLength: InputLimits.identityLength) ?? "?",
            host: try fields.text(.host, maxLength: InputLimits.identityLength) ?? "?",
            atMilliseconds: try fields.integer(.atMilliseconds, in: InputLimits.epochMilliseconds) ?? 0,
            who: try fields.text(.who, maxLength: InputLimits.identityLength),
            reason: try fields.text(.reason, maxLength: InputLimits.textLength))
        report = try fields.text(.report, maxLength: InputLimits.reportLength)
        messageTimestamp = try fields.integer(.messageTimestamp, in: InputLimits.epochMilliseconds)
        recorded = try fields.nested(Recorded.self, .recorded)
    }
}

extension Quarantine.Recorded {
    enum CodingKeys: String, CodingKey {
        case offset, count, state, host
        case atMilliseconds = "atMillis"
    }

    public init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: CodingKeys.self)
        guard let state = try fields.text(.state, maxLength: 32).flatMap(Quarantine.State.init(rawValue:)) else {
            throw FieldRefused(.field, "'state' must be counting, quarantined or suspect")
        }
        self.init(
            offset: try fields.requiredInteger(.offset, in: InputLimits.offsets),
            count: try fields.count(.count, in: InputLimits.quarantineSpan) ?? 1,
            state: state, host: try fields.text(.host, maxLength: InputLimits.identityLength) ?? "?",
            atMilliseconds: try fields.integer(.atMilliseconds, in: InputLimits.epochMilliseconds) ?? 0)
    }
}
