import ArgumentParser
import SluiceBench

@main
struct SluiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "Sluice: a Kafka worker host for Swift services. Operator and development tools.",
        subcommands: [
            DevBrokerCommand.self, ProduceCommand.self, ConsumeCommand.self, FlagsCommand.self, StatusCommand.self,
            ShardsCommand.self, AuditCommand.self, KeysCommand.self, BenchCommand.self, FleetHostCommand.self,
        ]
    )
}
