import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Testing

@Suite("Examples/OrderService as a process", .timeLimit(.minutes(2)))
struct OrderServiceTests {
    let logger = Logger(label: "sluice.order-service-test")

    func startService(_ cluster: any TestKafkaCluster, group: String, extra: [String] = []) throws -> (
        SluiceProcess, String
    ) {
        try Self.startService(cluster, group: group, extra: extra)
    }

    /// Starts Examples/OrderService against `cluster` in `group`, with its own database and admin API on a
    /// free port; returns the process and its database path.
    static func startService(
        _ cluster: any TestKafkaCluster, group: String, extra: [String] = [], environment: [String: String] = [:],
        editConfiguration: (String) -> String = { $0 }, ownProcessGroup: Bool = false,
        endHeldCrashHandling: Bool = false
    ) throws -> (SluiceProcess, String) {
        let database = FileManager.default.temporaryDirectory.appendingPathComponent(
            "orders-\(UUID().uuidString).sqlite"
        ).path
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-\(UUID().uuidString).yaml")
            .path
        let yaml = editConfiguration(
            try String(contentsOfFile: "Examples/OrderService/sluice.yaml", encoding: .utf8)
                .replacingOccurrences(of: "group: order-service", with: "group: \(group)"))
        try yaml.write(toFile: config, atomically: true, encoding: .utf8)
        let service = try SluiceProcess(
            ["--config", config, "--database", database] + extra, executable: "OrderService",
            environment: [
                "SLUICE_KAFKA_BOOTSTRAP": cluster.bootstrapServers, "SLUICE_ADMIN_TOKEN": "test-token",
                "SLUICE_ADMIN_LISTEN": "127.0.0.1:0", "SLUICE_ADMIN_STATE_FILE": database + ".flags.json",
                "SLUICE_HOST_STATE_DIRECTORY": database + ".state",
            ].merging(environment) { $1 }, ownProcessGroup: ownProcessGroup, endHeldCrashHandling: endHeldCrashHandling)
        return (service, database)
    }

    func produceOrders(_ cluster: any TestKafkaCluster, count: Int) async throws {
        let produce = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "orders", "--count", "\(count)", "--keys",
            "20",
        ])
        await produce.expectCleanExit()
    }

    @Test(
        "SIGTERM with a batch in flight: it finishes and is committed, nothing past handled work is committed, exit 0")
    func gracefulShutdown() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4, "payments": 2, "orders.dlq": 1])
        try await produceOrders(cluster, count: 2_000)
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        // A slow payments store: each batch write takes 3 s, so SIGTERM lands while one is in flight.
        let (service, _) = try startService(cluster, group: group, extra: ["--payment-delay-ms", "3000"])
        let produce = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "payments", "--count", "10",
        ])
        await produce.expectCleanExit()
        #expect(await service.errors.waitFor("batch write started", timeout: .seconds(40)))
        service.process.terminate()  // SIGTERM
        #expect(await service.exit() == 0)
        let output = await service.errors.all()
        #expect(output.contains("host stopped"))
        let summary = try #require(output.split(separator: "\n").first { $0.hasPrefix("order-service stopped: ") })
        let numbers = summary.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        try #require(numbers.count == 3, "\(summary)")
        let (handledOrders, violations, storedPayments) = (numbers[0], numbers[1], numbers[2])
        #expect(violations == 0)
        #expect(storedPayments > 0, "the batch in flight at SIGTERM finished: \(summary)")

        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        let checker = try KafkaConsumer(configuration: configuration, logger: logger)
        let payments = try await checker.committedOffsets(for: (0..<2).map { TopicPartition("payments", Int32($0)) })
        let orders = try await checker.committedOffsets(for: (0..<4).map { TopicPartition("orders", Int32($0)) })
        #expect(payments.values.reduce(0, +) == Int64(storedPayments), "exactly the stored payments are committed")
        let committedOrders = orders.values.reduce(0, +)
        #expect(
            committedOrders > 0 && committedOrders <= Int64(handledOrders),
            "committed \(committedOrders) of \(handledOrders) handled")
        await checker.close()
    }

    /// A SIGTERM as soon as the service says it is starting (before its services run) is a stop: status 0, not a
    /// death by the signal (an exactly-once process test, stopping a service just restarted, saw status 15).
    @Test("a SIGTERM while it starts stops it with status 0")
    func stopWhileStarting() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2, "payments": 1, "orders.dlq": 1])
        let (service, _) = try startService(cluster, group: "order-service-\(UInt32.random(in: 0...UInt32.max))")
        #expect(await service.errors.waitFor("order-service: starting"))
        kill(service.process.processIdentifier, SIGTERM)
        #expect(await service.exit() == 0, "\(service.errors.text.suffix(2_000))")
    }

    @Test("a second signal during the graceful shutdown exits at once with status 1")
    func secondSignalForcesExit() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2, "payments": 1, "orders.dlq": 1])
        // A payments store slower than the whole test keeps a batch in flight, so the graceful shutdown has work
        // to wait for whenever the second signal comes (a 5 s write could end first on a loaded machine).
        let (service, _) = try startService(
            cluster, group: "order-service-\(UInt32.random(in: 0...UInt32.max))",
            extra: ["--payment-delay-ms", "120000"])
        let produce = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "payments", "--count", "10",
        ])
        await produce.expectCleanExit()
        #expect(await service.errors.waitFor("batch write started", timeout: .seconds(40)), "a batch is in its write")
        kill(service.process.processIdentifier, SIGTERM)
        try await Task.sleep(for: .milliseconds(200))
        kill(service.process.processIdentifier, SIGTERM)
        #expect(await service.exit() == 1)
        let output = await service.errors.all()
        #expect(output.contains("second signal, exiting now"))
    }
}
