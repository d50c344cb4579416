import Foundation
import Logging
import SluiceKafka
import Testing

@Suite("Examples/OrderService as a process", .timeLimit(.minutes(2)))
struct OrderServiceTests {
    let logger = Logger(label: "sluice.order-service-test")

    func startService(_ cluster: EmbeddedKafkaCluster, group: String, extra: [String] = []) throws -> (SluiceProcess, String) {
        let database = FileManager.default.temporaryDirectory.appendingPathComponent("orders-\(UUID().uuidString).sqlite").path
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-\(UUID().uuidString).yaml").path
        let yaml = try String(contentsOfFile: "Examples/OrderService/sluice.yaml", encoding: .utf8)
            .replacingOccurrences(of: "group: order-service", with: "group: \(group)")
        try yaml.write(toFile: config, atomically: true, encoding: .utf8)
        let service = try SluiceProcess(
            ["--config", config, "--database", database] + extra, executable: "OrderService",
            environment: [
                "SLUICE_KAFKA_BOOTSTRAP": cluster.bootstrapServers, "SLUICE_ADMIN_TOKEN": "test-token",
                "SLUICE_ADMIN_LISTEN": "127.0.0.1:0", "SLUICE_ADMIN_STATE_FILE": database + ".flags.json",
            ])
        return (service, database)
    }

    func produceOrders(_ cluster: EmbeddedKafkaCluster, count: Int) throws {
        let produce = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "orders", "--count", "\(count)", "--keys", "20",
        ])
        produce.process.waitUntilExit()
        #expect(produce.process.terminationStatus == 0)
    }

    @Test("SIGTERM: in-flight work finishes, offsets are committed to the end, the group is left, exit 0")
    func gracefulShutdown() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4, "payments": 2, "orders.dlq": 1])
        try produceOrders(cluster, count: 2_000)
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let (service, _) = try startService(cluster, group: group)
        // The summary prints once shards run; wait for every order to be handled.
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        let checker = try KafkaConsumer(configuration: configuration, logger: logger)
        let partitions = (0..<4).map { TopicPartition("orders", Int32($0)) }
        let deadline = ContinuousClock.now + .seconds(40)
        var committed: [TopicPartition: Int64] = [:]
        while ContinuousClock.now < deadline {
            committed = (try? await checker.committedOffsets(for: partitions)) ?? [:]
            if committed.values.reduce(0, +) == 2_000 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(committed.values.reduce(0, +) == 2_000, "periodic commits reached the end")
        service.process.terminate()  // SIGTERM
        service.process.waitUntilExit()
        #expect(service.process.terminationStatus == 0)
        let output = String(decoding: service.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(output.contains("order-service stopped: 2000 orders, per-customer order violations 0"))
        #expect(output.contains("host stopped"))
        await checker.close()
    }

    @Test("a second signal during the graceful shutdown exits at once with status 1")
    func secondSignalForcesExit() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2, "payments": 1, "orders.dlq": 1])
        // A slow payments store keeps a batch in flight, so the graceful shutdown has work to wait for.
        let (service, _) = try startService(
            cluster, group: "order-service-\(UInt32.random(in: 0...UInt32.max))", extra: ["--payment-delay-ms", "5000"])
        let joined = service.waitForStandardError(containing: "host started", timeout: .seconds(20))
        #expect(joined.contains("host started"))
        let produce = try SluiceProcess(["produce", "--bootstrap", cluster.bootstrapServers, "--topic", "payments", "--count", "10"])
        produce.process.waitUntilExit()
        try await Task.sleep(for: .seconds(5))  // the join (3 s), then a batch is in its 5 s write
        kill(service.process.processIdentifier, SIGTERM)
        try await Task.sleep(for: .milliseconds(200))
        kill(service.process.processIdentifier, SIGTERM)
        service.process.waitUntilExit()
        #expect(service.process.terminationStatus == 1)
        let output = String(decoding: service.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(output.contains("second signal, exiting now"))
    }
}
