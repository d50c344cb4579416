import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The group's audit log: every change to its control state, who made it, why, before and after.
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Print the group's audit log (flags, quarantines and commands changed through the control topic).")
    @OptionGroup var control: ControlOptions
    @Option(name: .long, help: "Only the last N entries.") var last: Int?

    func validate() throws {
        if control.bootstrap == nil {
            throw ValidationError("the audit log is read from Kafka: add --bootstrap and --group")
        }
    }

    func run() async throws {
        try await runAdmin {
            let topic = ControlPlaneWriter.auditTopic(
                forControl: control.controlTopic ?? ControlPlaneFlagSource.defaultTopic(group: control.group!))
            var logger = Logger(label: "sluice.cli")
            logger.logLevel = .error
            let entries = Locked<[AuditEntry]>([])
            let bad = Locked(0)
            do {
                let reader = try ControlTopicReader(
                    bootstrapServers: control.bootstrap!, topic: topic, properties: try control.librdkafkaProperties(),
                    logger: logger
                ) { record in
                    if let value = record.value, let entry = AuditEntry(decoding: value) {
                        entries.withLock { $0.append(entry) }
                    } else {
                        bad.withLock { $0 += 1 }
                    }
                }
                try await reader.load(timeout: .seconds(max(control.wait, 1)))
                await reader.close()
            } catch {
                throw AdminClient.Failure(
                    description: "cannot read audit topic '\(topic)' at \(control.bootstrap!): \(error)")
            }
            var rows = [["AT", "WHO", "WHAT", "BEFORE", "AFTER", "WHY"]]
            let all = entries.withLock { $0 }
            for entry in all.suffix(last ?? all.count) {
                rows.append([
                    Date(timeIntervalSince1970: Double(entry.atMilliseconds) / 1000).formatted(.iso8601),
                    entry.who ?? "-", entry.subject,
                    entry.before ?? "?", entry.after, entry.reason ?? "",
                ])
            }
            print(Table.render(rows))
            let unreadable = bad.withLock { $0 }
            if unreadable > 0 { print("\(unreadable) audit record(s) could not be read") }
        }
    }
}
