import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `sluice status`: one host's shards, flags and quarantines.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract:
            "Show a running host's shards as a table; with --bootstrap and --group, every shard of the group from its control topic."
    )
    @OptionGroup var options: AdminOptions
    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await runAdmin {
            if control.bootstrap != nil {
                try await control.listShards()
                return
            }
            struct Answer: Decodable { var shards: [ShardReport] }
            let answer = try await AdminClient(options: options).get("/v1/shards", as: Answer.self)
            var rows = [
                [
                    "SHARD", "STATE", "FLAG", "PAUSED", "ATTEMPT", "COMMITTED", "LAG", "LAG AGE", "PROCESSED", "FAILED",
                    "LAST ERROR",
                ]
            ]
            var quarantines: [String] = []
            for shard in answer.shards {
                let stalled = shard.stalledForSeconds.map { " (stalled \(Int($0)) s)" } ?? ""
                // With worker processes, which worker runs it.
                let worker = shard.worker.map { " (w\($0))" } ?? ""
                rows.append([
                    shard.topicPartition.description + worker, shard.state + stalled,
                    shard.flag?.enabled ?? true ? "on" : "off",
                    shard.pauseReasons.joined(separator: ","), "\(shard.attempt)",
                    shard.committedOffset.map(String.init) ?? "-", shard.lag.map(String.init) ?? "-",
                    shard.lagSeconds.map { String(format: "%.1fs", $0) } ?? "-",
                    "\(shard.processed)", "\(shard.failed)", String((shard.lastError ?? "").prefix(60)),
                ])
                if let quarantine = shard.quarantine {
                    quarantines.append("\(shard.topicPartition) \(quarantine.state): \(quarantine.summary)")
                    // The crash report's first lines: what happened and where.
                    if let report = quarantine.report {
                        quarantines.append(contentsOf: report.split(separator: "\n").prefix(6).map { "    " + $0 })
                    }
                }
            }
            print(Table.render(rows))
            if !quarantines.isEmpty {
                print("\nQuarantined messages (their handler calls killed the process):")
                for line in quarantines { print("  " + line) }
            }
        }
    }
}
