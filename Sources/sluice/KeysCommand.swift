import ArgumentParser
import Sluice

/// `sluice keys generate`: the keys that sign a group's control records.
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Make the keys that sign a group's control records.",
        subcommands: [Generate.self]
    )

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a new host key and operator key pair, as environment assignments.",
            discussion: """
                Hosts get SLUICE_CONTROL_HOST_KEY and SLUICE_CONTROL_OPERATOR_PUBLIC_KEY (control.hostKey and \
                control.operatorPublicKey); operators keep SLUICE_CONTROL_OPERATOR_KEY for the CLI and give it to no \
                host (a host that has it can act as an operator). Keep the output out of shell history and logs.
                """)

        func run() throws {
            let keys = ControlKeys.generate()
            print("SLUICE_CONTROL_HOST_KEY=\(keys.hostKey)")
            print("SLUICE_CONTROL_OPERATOR_PUBLIC_KEY=\(keys.operatorPublicKey)")
            print("SLUICE_CONTROL_OPERATOR_KEY=\(keys.operatorKey)")
        }
    }
}
