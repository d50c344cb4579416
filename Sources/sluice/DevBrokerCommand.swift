import ArgumentParser
import Dispatch
import Foundation
import Logging
import SluiceKafka
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

struct DevBrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev-broker",
        abstract: "Run an embedded Kafka cluster (librdkafka's mock) on loopback until SIGINT or SIGTERM.",
        discussion: """
            Prints exactly one line on stdout, `bootstrap=HOST:PORT[,HOST:PORT...]`, once clients can connect. \
            Everything else goes to stderr. Committed offsets live in this process, so consumers can be \
            killed and restarted against it. End of input on stdin does not stop it.

            Fault injection: one command per line on stdin (answers on stderr):
              broker down ID                 take broker ID (1-based) down
              broker up ID                   bring broker ID back up
              rtt ID MILLISECONDS            delay every response of broker ID
              error API ERROR [ERROR...]     fail the next requests of API (Fetch, Produce, OffsetCommit,
                                             JoinGroup, Heartbeat, SyncGroup, Metadata, ... or a number)
                                             with the errors, one per request (NOT_LEADER_FOR_PARTITION,
                                             REBALANCE_IN_PROGRESS, ... or a number)
              leader TOPIC PARTITION ID      move a partition's leader to broker ID
              coordinator GROUP ID           move a consumer group's coordinator to broker ID
              topic NAME PARTITIONS          create a topic
              help                           list these commands

            Quirks of librdkafka 2.0.2's mock: at most 5 MiB kept per partition (older messages are dropped); \
            consumers need a small fetch.wait.max.ms (Sluice's default is 10 ms); the group coordinator waits \
            3 s before the first join completes, needs session.timeout.ms above 3000, and rejects commits \
            while a group is joining.
            """
    )

    @Option(name: .long, help: "Number of brokers.")
    var brokers: Int = 1

    @Option(name: .long, help: "A topic to create, as NAME:PARTITIONS. Repeat for more topics.")
    var topic: [String] = []

    @Option(
        name: .long,
        help: """
            Also accept bootstrap connections on 127.0.0.1:PORT. The mock binds ephemeral ports only, so this \
            port is a loopback forwarder to the first broker; the bootstrap line names it.
            """)
    var port: Int?

    func validate() throws {
        guard brokers >= 1 else { throw ValidationError("--brokers must be at least 1, got \(brokers)") }
        for spec in topic { _ = try Self.parseTopic(spec) }
        if let port, !(1...65535).contains(port) { throw ValidationError("--port must be 1...65535, got \(port)") }
    }

    static func parseTopic(_ spec: String) throws -> (String, Int) {
        let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, let count = Int(parts[1]), count >= 1 else {
            throw ValidationError("--topic '\(spec)': expected NAME:PARTITIONS with PARTITIONS >= 1, e.g. orders:8")
        }
        return (String(parts[0]), count)
    }

    func run() async throws {
        let logger = Logger(label: "sluice.dev-broker")
        var topics: [String: Int] = [:]
        for spec in topic {
            let (name, partitions) = try Self.parseTopic(spec)
            topics[name] = partitions
        }
        let cluster = try EmbeddedKafkaCluster(brokers: brokers, topics: topics)
        var bootstrap = cluster.bootstrapServers
        if let port {
            let firstBroker = String(cluster.bootstrapServers.split(separator: ",")[0])
            let forwarder = try LoopbackForwarder(listenPort: UInt16(port), upstream: firstBroker)
            forwarder.start()
            bootstrap = "127.0.0.1:\(port)"
        }
        // Clients can connect now: the mock's listeners are bound when rd_kafka_mock_cluster_new returns.
        FileHandle.standardOutput.write(Data("bootstrap=\(bootstrap)\n".utf8))
        logger.info(
            "embedded cluster running",
            metadata: ["brokers": "\(brokers)", "topics": "\(topics)", "bootstrap": "\(bootstrap)"])
        FaultCommandReader(cluster: cluster).start()
        let signal = await ShutdownSignal.wait()
        logger.info("stopping embedded cluster", metadata: ["signal": "\(signal)"])
        cluster.shutdown()
    }
}

/// Waits for SIGINT or SIGTERM.
enum ShutdownSignal {
    static func wait() async -> String {
        await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
            let once = ResumeOnce(continuation)
            for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                // The handler keeps its source alive for the rest of the process.
                source.setEventHandler {
                    _ = source
                    once.resume(name)
                }
                source.resume()
            }
        }
    }
}

/// Resumes a continuation at most once.
final class ResumeOnce: Sendable {
    private let continuation: Mutex<CheckedContinuation<String, Never>?>

    init(_ continuation: CheckedContinuation<String, Never>) { self.continuation = Mutex(continuation) }

    func resume(_ value: String) {
        continuation.withLock { continuation in
            continuation?.resume(returning: value)
            continuation = nil
        }
    }
}
