import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `sluice flags list|set|unset`: a host's flags, or the group's through the control topic.
struct FlagsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flags",
        abstract: "List, set and unset a running host's runtime flags.",
        subcommands: [List.self, Set.self, Unset.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the flags in force and their sources.")
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions

        func run() async throws {
            try await runAdmin {
                if control.bootstrap != nil {
                    try await control.list()
                    return
                }
                let answer = try await AdminClient(options: options).call("GET", "/v1/flags")
                let flags = answer["flags"] as? [[String: Any]] ?? []
                var rows = [["KEY", "VALUE", "SOURCE", "REASON"]]
                for flag in flags {
                    rows.append([
                        flag["key"] as? String ?? "",
                        (flag["rate"] as? Double).map(ControlRecord.describeRate)
                            ?? ((flag["enabled"] as? Bool ?? true) ? "on" : "off"),
                        flag["source"] as? String ?? "", flag["reason"] as? String ?? "",
                    ])
                }
                print(Table.render(rows))
                print("default: \(answer["default"] as? String ?? "on")")
                for (source, details) in (answer["sources"] as? [String: Any] ?? [:]).sorted(by: { $0.key < $1.key }) {
                    if let error = (details as? [String: Any])?["lastError"] as? String {
                        print("source \(source) failing: \(error)")
                    }
                }
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set an operator flag: KEY on|off (KEY is *, TOPIC or TOPIC/PARTITION).")
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions
        @Argument(help: "*, TOPIC or TOPIC/PARTITION") var key: String
        @Argument(help: "on or off") var value: String
        @Option(name: .long, help: "Why (logged and shown by `flags list`).") var reason: String?

        func validate() throws {
            let rate = ControlRecord.parseRate(value)
            guard ["on", "off"].contains(value) || rate != nil else {
                throw ValidationError("the value must be on, off or a rate such as 200/s, got '\(value)'")
            }
        }

        func run() async throws {
            try await runAdmin {
                if control.bootstrap != nil {
                    try await control.write(
                        key: key, enabled: value != "off", reason: reason, rate: ControlRecord.parseRate(value))
                    return
                }
                var body: [String: Any] =
                    ControlRecord.parseRate(value) != nil ? ["rate": value] : ["enabled": value == "on"]
                if let reason { body["reason"] = reason }
                _ = try await AdminClient(options: options).call("PUT", "/v1/flags/\(encode(key))", body: body)
                print("\(key): \(value)")
            }
        }
    }

    struct Unset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove an operator flag, so the file or the default decide again.")
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions
        @Argument(help: "*, TOPIC or TOPIC/PARTITION") var key: String
        @Option(name: .long, help: "Why (with --bootstrap, kept in the control record).") var reason: String?

        func run() async throws {
            try await runAdmin {
                if control.bootstrap != nil {
                    try await control.write(key: key, enabled: nil, reason: reason)
                    return
                }
                _ = try await AdminClient(options: options).call("DELETE", "/v1/flags/\(encode(key))")
                print("\(key): unset")
            }
        }
    }
}
