import Foundation
import SluiceKafka

#if canImport(Glibc)
    import Glibc
#endif

/// Reads `sluice dev-broker`'s fault-injection commands from stdin on a thread of its own and applies
/// them to the cluster. Answers go to stderr, so stdout keeps its single bootstrap line.
struct FaultCommandReader: Sendable {
    let cluster: EmbeddedKafkaCluster

    func start() {
        let thread = Thread { [cluster] in
            while let line = readLine() {
                let reply = FaultCommand.apply(line, to: cluster)
                if let reply { FileHandle.standardError.write(Data((reply + "\n").utf8)) }
            }
            // End of input: keep serving until a signal.
        }
        thread.start()
    }
}

/// One fault-injection command.
enum FaultCommand {
    static let help = """
        commands: broker down ID | broker up ID | rtt ID MILLISECONDS | error API ERROR [ERROR...] | \
        leader TOPIC PARTITION ID | coordinator GROUP ID | topic NAME PARTITIONS | help
        """

    /// Applies a command line; returns the answer (`ok: ...` or `error: ...`), or nil for a blank line.
    static func apply(_ line: String, to cluster: EmbeddedKafkaCluster) -> String? {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let verb = words.first?.lowercased() else { return nil }
        do {
            switch (verb, words.count) {
            case ("broker", 3) where words[1] == "down" || words[1] == "up":
                let broker = try int32(words[2], "broker ID")
                if words[1] == "down" { try cluster.setBrokerDown(broker) } else { try cluster.setBrokerUp(broker) }
            case ("rtt", 3):
                try cluster.setRoundTripTime(
                    broker: try int32(words[1], "broker ID"), .milliseconds(try int32(words[2], "milliseconds")))
            case ("error", 3...):
                guard let api = KafkaAPIKey(name: words[1]) else {
                    return
                        "error: unknown API '\(words[1])'; known: \(KafkaAPIKey.named.map(\.0).joined(separator: ", "))"
                }
                var codes: [KafkaErrorCode] = []
                for name in words[2...] {
                    guard let code = KafkaErrorCode(name: name) else { return "error: unknown error code '\(name)'" }
                    codes.append(code)
                }
                cluster.pushRequestErrors(apiKey: api, errors: codes)
            case ("leader", 4):
                try cluster.setPartitionLeader(
                    TopicPartition(words[1], try int32(words[2], "partition")), broker: try int32(words[3], "broker ID")
                )
            case ("coordinator", 3):
                try cluster.setGroupCoordinator(group: words[1], broker: try int32(words[2], "broker ID"))
            case ("topic", 3):
                try cluster.createTopic(words[1], partitions: Int(try int32(words[2], "partitions")))
            case ("help", _):
                return help
            default:
                return "error: cannot read '\(line)'; \(help)"
            }
            return "ok: \(line)"
        } catch let error as KafkaError {
            return "error: \(line): \(error.message)"
        } catch {
            return "error: \(line): \(error)"
        }
    }

    private struct BadNumber: Error, CustomStringConvertible {
        let description: String
    }

    private static func int32(_ word: String, _ what: String) throws -> Int32 {
        guard let value = Int32(word) else { throw BadNumber(description: "\(what) must be a number, got '\(word)'") }
        return value
    }
}
