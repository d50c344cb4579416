import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Sluice
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import OrderService

/// The example flag source of a team's own flag service (Examples/OrderService/Sources/HTTPFlagSource.swift),
/// against a flag service on loopback.
@Suite("An HTTP flag source, layered below the control plane", .timeLimit(.minutes(1)))
struct HTTPFlagSourceTests {
    /// A flag service whose answer the test changes.
    final class FlagService: Sendable {
        let answer = Mutex<(status: Int, body: String)>((200, "{}"))

        func run<T: Sendable>(_ body: @Sendable (URL) async throws -> T) async throws -> T {
            let router = Router()
            router.get("/flags") { _, _ -> Response in
                let (status, text) = self.answer.withLock { $0 }
                return Response(
                    status: .init(code: status), headers: [.contentType: "application/json"],
                    body: .init(byteBuffer: ByteBuffer(string: text)))
            }
            let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            return try await app.test(.live) { client in
                try await body(URL(string: "http://127.0.0.1:\(client.port!)/flags")!)
            }
        }
    }

    @Test("flags are read from the service, a change is seen on the next poll, and on, off and rates all parse")
    func reads() async throws {
        let service = FlagService()
        service.answer.withLock { $0 = (200, #"{"orders": "off", "orders/3": "on", "payments": "200/s"}"#) }
        try await service.run { url in
            let source = HTTPFlagSource(url: url)
            // The first answer (a request can time out on a loaded machine; what a timeout does is tested below).
            var first: [FlagKey: FlagSetting]?
            _ = await eventually(poll: .milliseconds(50)) {
                first = try? await source.load()
                return first != nil
            }
            let flags = try #require(first, "the service answered")
            #expect(flags[try FlagKey(parsing: "orders")] == FlagSetting(enabled: false, source: "http"))
            #expect(flags[try FlagKey(parsing: "orders/3")] == FlagSetting(enabled: true, source: "http"))
            #expect(flags[try FlagKey(parsing: "payments")] == FlagSetting(enabled: true, source: "http", rate: 200))
            service.answer.withLock { $0 = (200, #"{"orders": "on"}"#) }
            #expect(
                try await source.load() == [try FlagKey(parsing: "orders"): FlagSetting(enabled: true, source: "http")])
        }
    }

    @Test(
        "an error status, a body that is not a flag map, a bad key or value: an error naming the URL, and the last good flags stay in force"
    )
    func failures() async throws {
        let service = FlagService()
        service.answer.withLock { $0 = (200, #"{"orders": "off"}"#) }
        try await service.run { url in
            let source = HTTPFlagSource(url: url)
            let resolver = FlagResolver(sources: [source], logger: Logger(label: "test"))
            let orders3 = TopicPartition("orders", 3)
            // The first good answer (a request can time out on a loaded machine: the source then keeps nothing,
            // which is not what this test is about).
            let loaded = await eventually(poll: .milliseconds(50)) {
                await resolver.refresh()
                return resolver.setting(for: orders3) == FlagSetting(enabled: false, source: "http")
            }
            #expect(loaded, "the service's flags were read")
            let broken: [(Int, String, String)] = [
                (503, "{}", "HTTP 503"),
                (200, "[1, 2]", "expected a JSON object"),
                (200, #"{"orders/x": "off"}"#, "key 'orders/x'"),
                (200, #"{"orders": "maybe"}"#, "flag 'orders': expected on, off or a rate"),
            ]
            for (status, body, expected) in broken {
                service.answer.withLock { $0 = (status, body) }
                let error = await #expect(throws: SluiceError.self) { _ = try await source.load() }
                #expect(
                    error?.message.contains("flag service \(url)") == true && error?.message.contains(expected) == true,
                    "\(String(describing: error))")
                await resolver.refresh()
                #expect(
                    resolver.setting(for: orders3) == FlagSetting(enabled: false, source: "http"),
                    "kept after \(expected)")
                #expect(resolver.lastErrors["http"]?.contains(expected) == true)
            }
        }
    }

    @Test("a host layers it below the control plane and above the flag file")
    func layering() async throws {
        let service = FlagService()
        service.answer.withLock { $0 = (200, #"{"orders": "off", "payments": "off"}"#) }
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1, "payments": 1])
        let group = "http-flags-\(UInt32.random(in: 0...UInt32.max))"
        try cluster.createTopic("__sluice-control-\(group)", partitions: 1)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-http-flags-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let flagFile = directory.appendingPathComponent("flags.yaml").path
        try #"{"orders": "on", "payments": "on", "audit": "off"}"#.write(
            toFile: flagFile, atomically: true, encoding: .utf8)
        var configuration = SluiceConfiguration(
            kafka: .init(bootstrap: cluster.bootstrapServers, group: group),
            topics: ["orders": TopicConfiguration(), "payments": TopicConfiguration()])
        configuration.control.enabled = true
        configuration.flags.file = flagFile
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: configuration.controlTopic, logger: Logger(label: "test")
        )
        try await writer.setFlag(try FlagKey(parsing: "payments"), enabled: true, reason: "incident over", who: "test")
        await writer.close()
        let settings = configuration
        try await service.run { url in
            let host = SluiceHost(
                configuration: settings, logger: Logger(label: "test"), flagSources: [HTTPFlagSource(url: url)])
            #expect(host.flags.sources.map(\.name) == ["admin", "control", "http", "file"])
            try await host.control!.load(timeout: .seconds(10))
            await host.flags.refresh()
            // The flag service beats the file; the control plane beats the flag service; the file fills the rest.
            #expect(host.flags.setting(for: TopicPartition("orders", 0)) == FlagSetting(enabled: false, source: "http"))
            #expect(host.flags.setting(for: TopicPartition("payments", 0)).enabled)
            #expect(host.flags.setting(for: TopicPartition("payments", 0)).source == "control")
            #expect(host.flags.setting(for: TopicPartition("audit", 0)) == FlagSetting(enabled: false, source: "file"))
            await host.control!.close()
        }
    }
}
