import Foundation
import Logging
import SluiceKafka

/// Containment of handlers that trap (docs/architecture.md §12): the crash journal this process writes, and the
/// quarantines every process of the group honours.
final class CrashContainment: Sendable {
    let journal: CrashJournal
    private let control: ControlPlaneFlagSource?
    private let local: LocalQuarantineFile?

    private init(journal: CrashJournal, control: ControlPlaneFlagSource?, local: LocalQuarantineFile?) {
        self.journal = journal
        self.control = control
        self.local = local
    }

    /// The quarantine of a partition's message, if any.
    func quarantine(for topicPartition: TopicPartition) -> Quarantine? {
        if let control { return control.quarantine(for: topicPartition) }
        return local?.all[topicPartition]
    }

    /// Every quarantine known.
    var quarantines: [TopicPartition: Quarantine] { control?.quarantines ?? local?.all ?? [:] }

    /// Releases or skips a quarantine on this host's file (the control plane is off).
    func setLocal(_ topicPartition: TopicPartition, _ quarantine: Quarantine?) throws {
        guard let local else {
            throw SluiceError(
                code: .state,
                message:
                    "quarantines live in the control topic here; write them there (sluice shards skip --bootstrap --group)"
            )
        }
        try local.set(topicPartition, quarantine)
    }

    /// Opens this host's journal and acts on what dead processes left, before the host joins its group:
    /// a message blamed for a death has its count raised (group-wide when the control plane is on) and, at
    /// its topic's `onCrash.after`, is quarantined. Then installs the fatal-signal handlers.
    /// The journal is this host's own file in the state directory: each host of a process keeps its own.
    /// Without the control plane, quarantines are kept in the state directory for the cluster `clusterID`
    /// names, asked when the directory holds a journal or quarantines (before the journal is read: what a
    /// dead process left is only read when it can be recorded).
    static func start(
        configuration: SluiceConfiguration, control: ControlPlaneFlagSource?, host identity: String,
        clusterID: @Sendable () async throws -> String, logger: Logger
    ) async throws -> CrashContainment {
        var owner: StateOwner?
        if control == nil,
            (try? FileManager.default.contentsOfDirectory(atPath: configuration.stateDirectory))?.contains(where: {
                $0 == "quarantines.json" || $0.hasPrefix("crash-journal-")
            }) == true
        {
            do {
                owner = StateOwner(cluster: try await clusterID(), group: configuration.kafka.group)
            } catch {
                throw SluiceError(
                    code: .state,
                    message:
                        "crash containment: which Kafka cluster kafka.bootstrap leads to could not be asked (\(error)); quarantines in \(configuration.stateDirectory) are kept per cluster and group, and the host does not start without them"
                )
            }
        }
        let (journal, findings) = try CrashJournal.open(directory: configuration.stateDirectory, logger: logger)
        let local =
            control == nil
            ? try LocalQuarantineFile(directory: configuration.stateDirectory, owner: owner, logger: logger) : nil
        let containment = CrashContainment(journal: journal, control: control, local: local)
        if !findings.isEmpty {
            let writer = try control.map { _ in try configuration.controlWriter(logger: logger) }
            defer { if let writer { Task { await writer.close() } } }
            for finding in findings {
                try await containment.act(
                    on: finding, configuration: configuration, writer: writer, identity: identity, logger: logger)
            }
        }
        try journal.installSignalHandlers()
        logger.info("crash journal open", metadata: ["sluice.journal": "\(journal.path)"])
        return containment
    }

    /// Each partition with calls in flight at an unattributed death gets a `suspect` record covering them
    /// (merged with one already there).
    private func markSuspects(
        _ finding: CrashFinding, configuration: SluiceConfiguration, writer: ControlPlaneWriter?, identity: String
    ) async throws {
        let byPartition = Dictionary(grouping: finding.inFlight, by: \.topicPartition)
        for (topicPartition, calls) in byPartition.sorted(by: { $0.key < $1.key }) {
            var lower = calls.map(\.offset).min()!
            var upper = calls.map { $0.offset + Int64($0.count) }.max()!
            if let previous = quarantine(for: topicPartition), previous.state == .suspect {
                lower = min(lower, previous.range.lowerBound)
                upper = max(upper, previous.range.upperBound)
            } else if let previous = quarantine(for: topicPartition), previous.state != .counting {
                continue  // a quarantine decided already stays
            }
            let suspect = Quarantine(
                offset: lower, count: Int(upper - lower), crashes: 1, state: .suspect, signal: finding.signalName,
                host: identity,
                atMilliseconds: finding.diedAtMilliseconds)
            try await write(topicPartition, suspect, configuration: configuration, writer: writer)
        }
    }

    /// Writes a record and, with the control plane, waits until this host applied it.
    private func write(
        _ topicPartition: TopicPartition, _ quarantine: Quarantine?, configuration: SluiceConfiguration,
        writer: ControlPlaneWriter?
    ) async throws {
        if let writer, let control {
            let offset = try await writer.setQuarantine(
                topicPartition, quarantine, before: self.quarantine(for: topicPartition), signer: .host)
            if !(await control.waitUntilApplied(offset, timeout: configuration.control.loadTimeout)) {
                throw SluiceError(
                    code: .state,
                    message:
                        "control topic '\(control.topic)': the quarantine of \(topicPartition) was written but not read back in time; the host does not fetch without it"
                )
            }
        } else {
            try setLocal(topicPartition, quarantine)
        }
    }

    /// Removes a partition's suspect record once its shard handled past every suspect offset.
    func clearSuspect(_ topicPartition: TopicPartition, configuration: SluiceConfiguration, logger: Logger) async {
        guard let current = quarantine(for: topicPartition), current.state == .suspect else { return }
        do {
            let writer = try control.map { _ in try configuration.controlWriter(logger: logger) }
            try await write(topicPartition, nil, configuration: configuration, writer: writer)
            await writer?.close()
            logger.info(
                "suspects handled one at a time without a death: cleared",
                metadata: [
                    "kafka.partition": "\(topicPartition)",
                    "sluice.suspects": "\(current.offset)..<\(current.range.upperBound)",
                ])
        } catch {
            logger.warning(
                "could not clear a partition's suspects",
                metadata: ["kafka.partition": "\(topicPartition)", "error": "\(error)"])
        }
    }

    private func act(
        on finding: CrashFinding, configuration: SluiceConfiguration, writer: ControlPlaneWriter?, identity: String,
        logger: Logger
    ) async throws {
        let inFlight = finding.inFlight.map(\.description).joined(separator: ",")
        var metadata: Logger.Metadata = [
            "sluice.signal": "\(finding.signalName)", "sluice.pid": "\(finding.pid)",
            "sluice.journal": "\(finding.journal)",
            "sluice.inFlight": "\(inFlight.isEmpty ? "-" : inFlight)",
        ]
        switch finding.fault {
        case .sluice:
            logger.error(
                "the last process died of a fatal signal in Sluice's own code; no message is blamed", metadata: metadata
            )
            return
        case .unknown:
            logger.error(
                "the last process died of a fatal signal on a thread Sluice cannot attribute (a task or thread a handler started?); the messages in handler calls then are suspects, handled one at a time until one kills the process again",
                metadata: metadata)
            try await markSuspects(finding, configuration: configuration, writer: writer, identity: identity)
            return
        case .handler, .eliminated:
            break
        }
        guard let culprit = finding.culprit else { return }
        let topicPartition = culprit.topicPartition
        let policy = configuration.topics[topicPartition.topic]?.onCrash ?? TopicConfiguration.CrashPolicy()
        let previous = quarantine(for: topicPartition)
        // Found by elimination: the earlier unattributed death counts too. A record of another message at the
        // same offset (of an earlier incarnation of the topic) counts nothing.
        let sameMessage =
            previous.map {
                $0.offset == culprit.offset && $0.state != .suspect
                    && $0.isOfMessage(timestamp: culprit.timestampMilliseconds)
            } ?? false
        let crashes = (sameMessage ? previous!.crashes : 0) + (finding.fault == .eliminated ? 2 : 1)
        var quarantine = Quarantine(
            offset: culprit.offset, count: culprit.count, crashes: crashes,
            state: crashes >= policy.after ? Quarantine.State.quarantined : .counting,
            signal: finding.signalName, host: identity, atMilliseconds: finding.diedAtMilliseconds)
        quarantine.messageTimestamp = culprit.timestampMilliseconds
        quarantine.report = CrashReport.find(of: finding, in: configuration.stateDirectory)
        if let report = quarantine.report {
            // One log line: what happened and the first frames (the whole report is in the quarantine).
            metadata["sluice.crashReport"] =
                "\(report.split(separator: "\n").prefix(4).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " | "))"
        }
        metadata["kafka.topic"] = "\(topicPartition.topic)"
        metadata["kafka.partition"] = "\(topicPartition.partition)"
        metadata["kafka.offset"] = "\(culprit.offset)"
        metadata["sluice.crashes"] = "\(crashes)"
        // Applied here before this host fetches: its own pipelines must see it.
        try await write(topicPartition, quarantine, configuration: configuration, writer: writer)
        if finding.fault == .eliminated {
            logger.critical(
                "the culprit of the earlier unattributed death is found: it was the one suspect running when the process died again",
                metadata: metadata)
        }
        if quarantine.state == .quarantined {
            logger.critical(
                "the last process died in a handler call: message quarantined (onCrash.then: \(policy.then.rawValue))",
                metadata: metadata)
        } else {
            logger.error(
                "the last process died in a handler call: its death is counted (quarantined at onCrash.after \(policy.after))",
                metadata: metadata)
        }
    }
}
