import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Operator actions on one shard: skip or retry a quarantined message, reset a breaker.
struct ShardsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shards",
        abstract: "Release a quarantined message (skip it, or try it again) and reset shards.",
        subcommands: [List.self, Skip.self, DeadLetter.self, Reset.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "List the group's shards from its control topic: owner, state, trips and quarantines (no admin URL needed)."
        )
        @OptionGroup var control: ControlOptions

        func validate() throws {
            if control.bootstrap == nil {
                throw ValidationError("shards list reads the group's control topic: add --bootstrap and --group")
            }
        }

        func run() async throws {
            try await runAdmin { try await control.listShards() }
        }
    }

    static func parse(_ text: String) throws -> TopicPartition {
        guard let topicPartition = TopicPartition(parsing: text) else {
            throw ValidationError("a shard is TOPIC/PARTITION, e.g. orders/3, got '\(text)'")
        }
        return topicPartition
    }

    struct Skip: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Commit a quarantined message without calling its handler (it killed the process); audited with who and why."
        )
        @OptionGroup var release: ReleaseOptions

        func run() async throws { try await release.run(.skip, done: "skipped") }
    }

    struct DeadLetter: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dead-letter",
            abstract:
                "Write a quarantined message to its topic's dead-letter topic, with its crash report, without calling its handler."
        )
        @OptionGroup var release: ReleaseOptions

        func run() async throws { try await release.run(.deadLetter, done: "released to the dead-letter topic") }
    }

    /// What `skip` and `dead-letter` take: the shard, the offset the operator saw, and why.
    struct ReleaseOptions: ParsableArguments {
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions
        @Argument(help: "TOPIC/PARTITION") var shard: String
        @Option(
            name: .long,
            help: "The quarantined message's offset (as `sluice status` shows it); refused if it is not that one.")
        var offset: Int64
        @Option(name: .long, help: "Why (kept with the release).") var reason: String?

        func validate() throws { _ = try ShardsCommand.parse(shard) }

        func run(_ release: Quarantine.Release, done: String) async throws {
            try await runAdmin {
                let topicPartition = try ShardsCommand.parse(shard)
                if control.bootstrap != nil {
                    try await control.releaseQuarantine(topicPartition, as: release, offset: offset, reason: reason)
                    return
                }
                var body: [String: Any] = ["offset": offset]
                if let reason { body["reason"] = reason }
                let path = release == .deadLetter ? "dead-letter" : "skip"
                _ = try await AdminClient(options: options).call(
                    "POST", "/v1/shards/\(encode(topicPartition.topic))/\(topicPartition.partition)/\(path)", body: body
                )
                print("\(topicPartition): offset \(offset) \(done)")
            }
        }
    }

    struct Reset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a tripped or backing-off shard now; a quarantined message is released and tried again.")
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions
        @Argument(help: "TOPIC/PARTITION") var shard: String

        func validate() throws { _ = try ShardsCommand.parse(shard) }

        func run() async throws {
            try await runAdmin {
                let topicPartition = try ShardsCommand.parse(shard)
                if control.bootstrap != nil {
                    try await control.reset(topicPartition)
                    return
                }
                let answer = try await AdminClient(options: options).call(
                    "POST", "/v1/shards/\(encode(topicPartition.topic))/\(topicPartition.partition)/reset")
                print(
                    "\(topicPartition): reset"
                        + ((answer["quarantineReleased"] as? Bool ?? false)
                            ? "; its quarantined message is tried again" : ""))
            }
        }
    }
}
