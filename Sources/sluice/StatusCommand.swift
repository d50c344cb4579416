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
            let answer = try await AdminClient(options: options).call("GET", "/v1/shards")
            var rows = [
                [
                    "SHARD", "STATE", "FLAG", "PAUSED", "ATTEMPT", "COMMITTED", "LAG", "LAG AGE", "PROCESSED", "FAILED",
                    "LAST ERROR",
                ]
            ]
            var quarantines: [String] = []
            for shard in answer["shards"] as? [[String: Any]] ?? [] {
                let flag = shard["flag"] as? [String: Any] ?? [:]
                let stalled = (shard["stalledForSeconds"] as? Double).map { " (stalled \(Int($0)) s)" } ?? ""
                rows.append([
                    "\(shard["topic"] as? String ?? "")/\(shard["partition"] as? Int ?? 0)",
                    (shard["state"] as? String ?? "") + stalled,
                    (flag["enabled"] as? Bool ?? true) ? "on" : "off",
                    (shard["pauseReasons"] as? [String] ?? []).joined(separator: ","),
                    "\(shard["attempt"] as? Int ?? 0)",
                    (shard["committedOffset"] as? Int).map(String.init) ?? "-",
                    (shard["lag"] as? Int).map(String.init) ?? "-",
                    (shard["lagSeconds"] as? Double).map { String(format: "%.1fs", $0) } ?? "-",
                    "\(shard["processed"] as? Int ?? 0)",
                    "\(shard["failed"] as? Int ?? 0)",
                    String((shard["lastError"] as? String ?? "").prefix(60)),
                ])
                if let quarantine = shard["quarantine"] as? [String: Any] {
                    quarantines.append(
                        "\(shard["topic"] as? String ?? "")/\(shard["partition"] as? Int ?? 0) \(quarantine["state"] as? String ?? ""): "
                            + (quarantine["summary"] as? String ?? ""))
                    // The crash report's first lines: what happened and where.
                    if let report = quarantine["report"] as? String {
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
