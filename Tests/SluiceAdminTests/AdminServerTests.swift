import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Metrics
import Prometheus
import SluiceAdmin
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

enum AdminFixture {
    static let logger: Logger = {
        var logger = Logger(label: "sluice.admin-test")
        logger.logLevel = .critical
        return logger
    }()

    /// One Prometheus registry for the test process (swift-metrics is bootstrapped once per process).
    static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }()

    static func stateFile() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("admin-\(UUID().uuidString)/flags.json").path
    }

    static func host(
        bootstrap: String = "127.0.0.1:1", stateFile: String, token: String? = "s3cret", topics: [String] = ["orders"],
        group: String? = nil
    ) -> SluiceHost {
        // One group per state file (its directory's name is unique): a restart on the same file is the same service.
        let group = group ?? URL(fileURLWithPath: stateFile).deletingLastPathComponent().lastPathComponent
        var kafka = SluiceConfiguration.Kafka(bootstrap: bootstrap, group: group)
        kafka.sessionTimeout = .seconds(6)
        var configuration = SluiceConfiguration(
            kafka: kafka, topics: Dictionary(uniqueKeysWithValues: topics.map { ($0, TopicConfiguration()) }))
        configuration.stateDirectory =
            FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)").path
        configuration.admin.token = token
        configuration.admin.stateFile = stateFile
        configuration.admin.maxBodyBytes = 256
        configuration.flags.pollInterval = .milliseconds(200)
        let host = SluiceHost(configuration: configuration, logger: logger)
        for topic in topics { host.register(topic, NoopHandler()) }
        return host
    }

    static func body(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }
}

struct NoopHandler: MessageHandler {
    func handle(_ message: Message, context: ShardContext) async throws {}
}

func decode(_ buffer: ByteBuffer) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(buffer: buffer))) as? [String: Any] ?? [:]
}

@Suite("Admin API in process", .timeLimit(.minutes(2)))
struct AdminServerTests {
    let bearer: HTTPFields = [.authorization: "Bearer s3cret"]

    @Test("with the control plane on, PUT and DELETE /v1/flags write the group's control topic; no state file is kept")
    func flagsThroughControlPlane() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 2])
        var kafka = SluiceConfiguration.Kafka(
            bootstrap: cluster.bootstrapServers, group: "admin-\(UInt32.random(in: 0...UInt32.max))")
        kafka.sessionTimeout = .seconds(6)
        var configuration = SluiceConfiguration(kafka: kafka, topics: ["orders": TopicConfiguration()])
        configuration.stateDirectory =
            FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)").path
        configuration.admin.token = "s3cret"
        let stateFile = AdminFixture.stateFile()
        configuration.admin.stateFile = stateFile
        configuration.control.enabled = true
        try cluster.createTopic(configuration.controlTopic, partitions: 1)
        let host = SluiceHost(configuration: configuration, logger: AdminFixture.logger)
        host.register("orders", NoopHandler())
        let running = Task { try await host.run() }
        defer { host.shutdown() }
        let app = Application(
            router: try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        let partition = TopicPartition("orders", 1)
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/v1/flags/orders/1", method: .put, headers: bearer,
                body: AdminFixture.body(#"{"enabled": false, "reason": "slow db"}"#)
            ) { response in
                #expect(response.status == .ok)
                let body = decode(response.body)
                #expect(body["source"] as? String == "control")
                #expect((body["controlOffset"] as? Int).map { $0 >= 0 } == true, "the record's offset")
            }
            let deadline = ContinuousClock.now + .seconds(40)
            while host.shards.first(where: { $0.topicPartition == partition })?.state != .off,
                ContinuousClock.now < deadline
            {
                try await Task.sleep(for: .milliseconds(50))
            }
            let flag = host.shards.first { $0.topicPartition == partition }?.flag
            #expect(
                flag == FlagSetting(enabled: false, source: "control", reason: "slow db", who: flag?.who)
                    && flag?.who != nil)
            try await client.execute(uri: "/v1/flags/orders/1", method: .delete, headers: bearer) { response in
                #expect(response.status == .ok)
                #expect(decode(response.body)["removed"] as? Bool == true)
            }
            while host.shards.first(where: { $0.topicPartition == partition })?.state != .running,
                ContinuousClock.now < deadline
            {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(host.shards.first { $0.topicPartition == partition }?.state == .running)
            try await client.execute(uri: "/v1/flags/orders/1", method: .delete, headers: bearer) { response in
                #expect(response.status == .notFound, "nothing left to remove")
            }
            // A reset goes to the control topic as a command for whichever host owns the shard.
            var written: Int?
            try await client.execute(uri: "/v1/shards/orders/1/reset", method: .post, headers: bearer) { response in
                #expect(response.status == .ok)
                written = decode(response.body)["controlOffset"] as? Int
            }
            let offset = try #require(written, "written to the control topic")
            while host.control?.commands(from: Int64(offset)).isEmpty != false, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            let command = host.control?.commands(from: Int64(offset)).first?.command
            #expect(
                command?.action == .reset && command?.topicPartition == partition,
                "the host read the reset command back")
        }
        #expect(
            !FileManager.default.fileExists(atPath: stateFile),
            "the per-host state file is not used with the control plane")
        host.shutdown()
        try await running.value
    }

    @Test("readiness and health say why a host that does not run is not ready")
    func notReady() async throws {
        let host = AdminFixture.host(stateFile: AdminFixture.stateFile())
        let app = Application(
            router: try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        try await app.test(.router) { client in
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(decode(response.body)["reasons"] as? [String] == ["the host is not running"])
            }
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
            }
        }
    }

    @Test("changes need the token: 401 without or with a wrong one, and the flag stays unchanged")
    func tokenRequired() async throws {
        let host = AdminFixture.host(stateFile: AdminFixture.stateFile())
        let app = Application(
            router: try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        try await app.test(.router) { client in
            for headers: HTTPFields in [[:], [.authorization: "Bearer nope"], [.authorization: "s3cret"]] {
                try await client.execute(
                    uri: "/v1/flags/orders", method: .put, headers: headers,
                    body: AdminFixture.body(#"{"enabled": false}"#)
                ) { response in
                    #expect(response.status == .unauthorized)
                    #expect(
                        decode(response.body)["error"] as? String == "this change needs Authorization: Bearer <token>")
                }
            }
            try await client.execute(uri: "/v1/shards/orders/0/reset", method: .post) {
                #expect($0.status == .unauthorized)
            }
            try await client.execute(uri: "/v1/flags", method: .get) {
                #expect($0.status == .unauthorized, "reads need the token too")
            }
            try await client.execute(uri: "/v1/flags", method: .get, headers: [.authorization: "Bearer s3cret"]) {
                response in
                #expect(response.status == .ok)
                #expect((decode(response.body)["flags"] as? [Any])?.isEmpty == true)
            }
        }
        #expect(host.operatorFlags.current.isEmpty)
    }

    @Test("malformed requests get 400 (413 for a large body) with a JSON error naming the problem")
    func malformed() async throws {
        let host = AdminFixture.host(stateFile: AdminFixture.stateFile())
        let app = Application(
            router: try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        let cases: [(String, String, HTTPResponse.Status, String)] = [
            ("/v1/flags/orders", "{not json", .badRequest, "the body is not valid JSON"),
            ("/v1/flags/orders", #"[true]"#, .badRequest, "the body must be a JSON object"),
            (
                "/v1/flags/orders", #"{"enabled": false, "why": "x"}"#, .badRequest,
                "unknown field(s) why; allowed: enabled, reason, rate"
            ),
            (
                "/v1/flags/orders", #"{"enabled": "no"}"#, .badRequest,
                "\"enabled\" (true or false) or \"rate\" is required"
            ),
            (
                "/v1/flags/orders", #"{"enabled": 0}"#, .badRequest,
                "\"enabled\" (true or false) or \"rate\" is required"
            ),
            (
                "/v1/flags/orders", #"{"reason": "x"}"#, .badRequest,
                "\"enabled\" (true or false) or \"rate\" is required"
            ),
            ("/v1/flags/orders/x", #"{"enabled": false}"#, .badRequest, "flag key 'orders/x'"),
            (
                "/v1/flags/orders%00x", #"{"enabled": false}"#, .badRequest,
                "flag key 'orders\\0x': not a Kafka topic name"
            ),
            (
                "/v1/flags/" + String(repeating: "a", count: 10_000), #"{"enabled": false}"#, .badRequest,
                "at most 249 characters"
            ),
            (
                "/v1/flags/orders%2F2147483648", #"{"enabled": false}"#, .badRequest,
                "the partition must be a number in 0...2147483647"
            ),
            (
                "/v1/flags/orders", "{\"enabled\": false, \"reason\": \"\(String(repeating: "x", count: 400))\"}",
                .contentTooLarge, "larger than 256 bytes"
            ),
        ]
        try await app.test(.router) { client in
            for (uri, body, status, message) in cases {
                try await client.execute(uri: uri, method: .put, headers: bearer, body: AdminFixture.body(body)) {
                    response in
                    #expect(response.status == status, "\(uri) \(body.prefix(40))")
                    #expect(
                        (decode(response.body)["error"] as? String)?.contains(message) == true,
                        "\(decode(response.body))")
                }
            }
            try await client.execute(uri: "/v1/shards/orders/minus/reset", method: .post, headers: bearer) { response in
                #expect(response.status == .badRequest)
                #expect(decode(response.body)["error"] as? String == "partition must be a number, got 'minus'")
            }
            try await client.execute(uri: "/v1/shards/orders/7/reset", method: .post, headers: bearer) { response in
                #expect(response.status == .notFound)
            }
            try await client.execute(uri: "/v1/flags/payments", method: .delete, headers: bearer) { response in
                #expect(response.status == .notFound)
            }
        }
        #expect(host.operatorFlags.current.isEmpty, "nothing changed")
    }

    @Test(
        "an admin state file of another consumer group is set aside, none of its overrides applied; one naming no group (written before files did) applies and is then written with the group"
    )
    func stateFileOfAnotherGroup() async throws {
        let stateFile = AdminFixture.stateFile()
        try FileManager.default.createDirectory(
            atPath: (stateFile as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(
            #"{"group": "another-service", "flags": [{"key": "orders", "enabled": false, "reason": "their incident"}]}"#
                .utf8
        )
        .write(to: URL(fileURLWithPath: stateFile))
        let host = AdminFixture.host(stateFile: stateFile, group: "orders-service")
        _ = try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
        #expect(host.operatorFlags.current.isEmpty, "another group's overrides do not apply")
        let names = try FileManager.default.contentsOfDirectory(
            atPath: (stateFile as NSString).deletingLastPathComponent)
        #expect(names.contains { $0.hasPrefix("flags.json.set-aside-") } && !names.contains("flags.json"), "\(names)")

        try Data(#"{"flags": [{"key": "orders", "enabled": false, "reason": "incident 42"}]}"#.utf8).write(
            to: URL(fileURLWithPath: stateFile))
        let upgraded = AdminFixture.host(stateFile: stateFile, group: "orders-service")
        let app = Application(
            router: try AdminServer(host: upgraded, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        #expect(
            upgraded.operatorFlags.current[.topic("orders")]?.reason == "incident 42",
            "an upgrade keeps the incident's override")
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/v1/flags/orders/3", method: .put, headers: bearer,
                body: AdminFixture.body(#"{"enabled": false}"#)
            ) {
                #expect($0.status == .ok)
            }
        }
        let saved =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: stateFile))) as? [String: Any]
        #expect(saved?["group"] as? String == "orders-service")
    }

    @Test("an override set over HTTP is listed, persisted, and survives a restart; DELETE removes it")
    func persistedOverride() async throws {
        let stateFile = AdminFixture.stateFile()
        let group = "admin-\(UInt32.random(in: 0...UInt32.max))"
        let host = AdminFixture.host(stateFile: stateFile, group: group)
        let app = Application(
            router: try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/v1/flags/orders/3", method: .put, headers: bearer,
                body: AdminFixture.body(#"{"enabled": false, "reason": "incident 42"}"#)
            ) { response in
                #expect(response.status == .ok)
                #expect(decode(response.body)["key"] as? String == "orders/3")
            }
            try await client.execute(
                uri: "/v1/flags/%2A", method: .put, headers: bearer, body: AdminFixture.body(#"{"enabled": true}"#)
            ) {
                #expect($0.status == .ok)
            }
        }
        #expect(
            host.operatorFlags.current[.partition(TopicPartition("orders", 3))]
                == FlagSetting(enabled: false, source: "admin", reason: "incident 42"))
        #expect(host.operatorFlags.current[.all]?.enabled == true)

        // A new process: a new host and admin server of the same group on the same state file.
        let restarted = AdminFixture.host(stateFile: stateFile, group: group)
        let restartedApp = Application(
            router: try AdminServer(host: restarted, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        #expect(restarted.operatorFlags.current[.partition(TopicPartition("orders", 3))]?.reason == "incident 42")
        await restarted.flags.refresh()
        try await restartedApp.test(.router) { client in
            try await client.execute(uri: "/v1/flags", method: .get, headers: [.authorization: "Bearer s3cret"]) {
                response in
                let flags = decode(response.body)["flags"] as? [[String: Any]] ?? []
                #expect(flags.map { $0["key"] as? String } == ["*", "orders/3"])
                #expect(flags.last?["reason"] as? String == "incident 42")
            }
            try await client.execute(uri: "/v1/flags/orders%2F3", method: .delete, headers: bearer) {
                #expect($0.status == .ok)
            }
        }
        #expect(restarted.operatorFlags.current[.partition(TopicPartition("orders", 3))] == nil)
        let saved = try String(contentsOfFile: stateFile, encoding: .utf8)
        #expect(!saved.contains("orders/3") && saved.contains("\"*\""))
    }

    @Test(
        "a rate flag over HTTP: set, listed, persisted across a restart; a bad rate or a rate with enabled false is refused"
    )
    func rateOverride() async throws {
        let stateFile = AdminFixture.stateFile()
        let host = AdminFixture.host(stateFile: stateFile)
        let app = Application(
            router: try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/v1/flags/orders", method: .put, headers: bearer,
                body: AdminFixture.body(#"{"rate": "200/s", "reason": "protect the db"}"#)
            ) { response in
                #expect(response.status == .ok)
                #expect(decode(response.body)["rate"] as? Double == 200)
            }
            for bad in [#"{"rate": "fast"}"#, #"{"rate": 0}"#, #"{"rate": 50, "enabled": false}"#] {
                try await client.execute(
                    uri: "/v1/flags/payments", method: .put, headers: bearer, body: AdminFixture.body(bad)
                ) { response in
                    #expect(response.status == .badRequest, "\(bad)")
                }
            }
        }
        #expect(
            host.operatorFlags.current[.topic("orders")]
                == FlagSetting(enabled: true, source: "admin", reason: "protect the db", rate: 200))
        #expect(host.operatorFlags.current[.topic("payments")] == nil)
        let restarted = AdminFixture.host(stateFile: stateFile)
        _ = try AdminServer(host: restarted, registry: AdminFixture.registry, logger: AdminFixture.logger)
        #expect(restarted.operatorFlags.current[.topic("orders")]?.rate == 200, "the rate survives a restart")
    }

    @Test("a state file that cannot be read stops the start, naming the file")
    func badStateFile() throws {
        let stateFile = AdminFixture.stateFile()
        try FileManager.default.createDirectory(
            atPath: (stateFile as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        // Values that once trapped the host at start (a rate of 0 or -5) are refused like the rest, naming the entry.
        for (content, says) in [
            (#"{"flags": [{"key": "orders"}]}"#, #"flag 1: each flag needs "key" and "enabled" (true or false)"#),
            (
                #"{"flags": [{"key": "orders", "enabled": 1}]}"#,
                #"flag 1: each flag needs "key" and "enabled" (true or false)"#
            ),
            (
                #"{"flags": [{"key": "orders", "enabled": true, "rate": 0}]}"#,
                #"flag 1: "rate" must be from 0.001 to 1000000 messages a second, got 0.0"#
            ),
            (
                #"{"flags": [{"key": "orders", "enabled": true, "rate": -5}]}"#,
                "flag 1: 'rate' must be in 0.0...1000000.0, got -5.0"
            ),
            (
                #"{"flags": [{"key": "orders", "enabled": true, "rate": "fast"}]}"#,
                "flag 1: 'rate' must be a number, got a string"
            ),
            (#"{"flags": [{"key": "orders", "enabled": true}, {"key": "orders/x", "enabled": false}]}"#, "orders/x"),
        ] {
            try content.write(toFile: stateFile, atomically: true, encoding: .utf8)
            let error = #expect(throws: SluiceError.self) {
                _ = try AdminServer(
                    host: AdminFixture.host(stateFile: stateFile), registry: AdminFixture.registry,
                    logger: AdminFixture.logger)
            }
            #expect(error?.message.hasPrefix("\(stateFile): operator flag state: ") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains(says) == true, "\(error?.message ?? "")")
        }
    }
}

@Suite("Admin API against a running host", .timeLimit(.minutes(2)))
struct AdminEndToEndTests {
    @Test(
        "a shard's per-partition series leave /metrics when the host lets the partition go (no stale lag on a host that no longer owns it)"
    )
    func perPartitionSeriesGo() async throws {
        // Labels unique to this test: the registry is the process's.
        let topic = "gone-\(UInt32.random(in: 0...UInt32.max))"
        _ = AdminFixture.registry  // metrics bootstrapped before the host makes its gauges
        let cluster = try EmbeddedKafkaCluster(topics: [topic: 2])
        let host = AdminFixture.host(
            bootstrap: cluster.bootstrapServers, stateFile: AdminFixture.stateFile(), topics: [topic])
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + .seconds(60)
        while host.shards.filter({ $0.state == .running }).count < 2, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        func series() -> [String] {
            String(decoding: AdminFixture.registry.emitToBuffer(), as: UTF8.self).split(separator: "\n")
                .filter {
                    $0.hasPrefix("sluice_shard_") && $0.contains("topic=\"\(topic)\"") && $0.contains("partition=")
                }.map(String.init)
        }
        #expect(
            series().contains { $0.hasPrefix("sluice_shard_flag_enabled") },
            "per-partition series while the shards run: \(series())")
        host.shutdown()
        try await running.value
        #expect(series().isEmpty, "gone once the partitions are released: \(series())")
    }

    @Test("metrics.perPartition off: no per-partition series, the topic's lag total stays")
    func perPartitionSeriesOff() async throws {
        let topic = "totals-\(UInt32.random(in: 0...UInt32.max))"
        _ = AdminFixture.registry
        let cluster = try EmbeddedKafkaCluster(topics: [topic: 2])
        // Through the file a user writes: `metrics: { perPartition: off }` read by `SluiceConfiguration.load`.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-metrics-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let file = directory.appendingPathComponent("sluice.yaml").path
        try """
        kafka: { bootstrap: "\(cluster.bootstrapServers)", group: totals-\(UInt32.random(in: 0...UInt32.max)), sessionTimeout: 6s }
        topics: { \(topic): {} }
        host: { stateDirectory: \(directory.path)/state }
        admin: { enabled: off }
        metrics: { perPartition: off }
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let configuration = try await SluiceConfiguration.load(file: file, environment: [:])
        #expect(configuration.perPartitionMetrics == false)
        let host = SluiceHost(configuration: configuration, logger: AdminFixture.logger)
        host.register(topic, NoopHandler())
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + .seconds(60)
        func lines() -> [String] {
            String(decoding: AdminFixture.registry.emitToBuffer(), as: UTF8.self).split(separator: "\n")
                .filter { $0.contains("topic=\"\(topic)\"") }.map(String.init)
        }
        while host.shards.filter({ $0.state == .running }).count < 2, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        let ticks = host.ticks
        while host.ticks < ticks + 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(host.shards.count == 2)
        #expect(lines().contains { $0.hasPrefix("sluice_topic_lag{topic=\"\(topic)\"}") }, "\(lines())")
        #expect(!lines().contains { $0.contains("partition=") }, "no per-partition series: \(lines())")
        host.shutdown()
        try await running.value
    }

    @Test("/readyz turns ready after the group join; a flag flipped over HTTP stops the shard; metrics show it")
    func flipOverHTTP() async throws {
        let registry = AdminFixture.registry
        // Metrics are process-wide and other tests run hosts too: use a topic no other test has.
        let cluster = try EmbeddedKafkaCluster(topics: ["admin-e2e": 2])
        let host = AdminFixture.host(
            bootstrap: cluster.bootstrapServers, stateFile: AdminFixture.stateFile(), topics: ["admin-e2e"])
        let app = Application(
            router: try AdminServer(host: host, registry: registry, logger: AdminFixture.logger).makeRouter())
        let running = Task { try await host.run() }
        try await app.test(.router) { client in
            // Each wait on its own: one deadline for both let a slow join (a loaded machine) leave the flip no time.
            let ready = await eventually(poll: .milliseconds(100)) {
                try await client.execute(uri: "/readyz", method: .get) { $0.status == .ok }
            }
            #expect(ready, "ready after the join")
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }

            try await client.execute(
                uri: "/v1/flags/admin-e2e/1", method: .put, headers: [.authorization: "Bearer s3cret"],
                body: AdminFixture.body(#"{"enabled": false, "reason": "e2e"}"#)
            ) { #expect($0.status == .ok) }
            var state = ""
            _ = await eventually {
                state = try await client.execute(
                    uri: "/v1/shards", method: .get, headers: [.authorization: "Bearer s3cret"]
                ) { response in
                    let shards = decode(response.body)["shards"] as? [[String: Any]] ?? []
                    return shards.first { $0["partition"] as? Int == 1 }?["state"] as? String ?? ""
                }
                return state == "off"
            }
            #expect(state == "off")
            // Reads need the token too: they show error texts and the group's layout.
            try await client.execute(uri: "/v1/shards", method: .get) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/metrics", method: .get) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/v1/shards", method: .get, headers: [.authorization: "Bearer s3cret"]) {
                response in
                let shards = decode(response.body)["shards"] as? [[String: Any]] ?? []
                let off = shards.first { $0["partition"] as? Int == 1 }
                #expect(off?["pauseReasons"] as? [String] == ["flag"])
                #expect((off?["flag"] as? [String: Any])?["source"] as? String == "admin")
                #expect(shards.first { $0["partition"] as? Int == 0 }?["state"] as? String == "running")
            }
            try await Task.sleep(for: .milliseconds(1200))
            try await client.execute(uri: "/metrics", method: .get, headers: [.authorization: "Bearer s3cret"]) {
                response in
                let text = String(buffer: response.body)
                #expect(response.headers[.contentType]?.hasPrefix("text/plain") == true)
                #expect(text.contains("sluice_shards{state=\"off\"}"))
                #expect(text.contains("sluice_shard_flag_enabled{topic=\"admin-e2e\",partition=\"1\"} 0"))
                #expect(text.contains("sluice_shard_flag_enabled{topic=\"admin-e2e\",partition=\"0\"} 1"))
            }
        }
        host.shutdown()
        try await running.value
    }
}

@Suite("admin settings through a loaded file", .timeLimit(.minutes(1)))
struct AdminConfigurationTests {
    @Test(
        "admin { token, stateFile, maxBodyBytes } from YAML: changes need the token, a body over the limit gets 413, an override persists in the state file"
    )
    func adminFromTheFile() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-admin-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let stateFile = directory.appendingPathComponent("overrides.json").path
        let path = directory.appendingPathComponent("sluice.yaml").path
        try """
        kafka: { bootstrap: "127.0.0.1:1", group: admin-config }
        host: { stateDirectory: \(directory.path)/state }
        admin:
          token: from-the-file
          stateFile: \(stateFile)
          maxBodyBytes: 64
        topics: { orders: {} }
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let configuration = try await SluiceConfiguration.load(file: path, environment: [:])
        let host = SluiceHost(configuration: configuration, logger: AdminFixture.logger)
        host.register("orders", NoopHandler())
        let app = Application(
            router: try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/v1/flags/orders", method: .put, headers: [.authorization: "Bearer s3cret"],
                body: AdminFixture.body(#"{"enabled": false}"#)
            ) {
                #expect($0.status == .unauthorized)
            }
            let large = #"{"enabled": false, "reason": "\#(String(repeating: "x", count: 100))"}"#
            try await client.execute(
                uri: "/v1/flags/orders", method: .put, headers: [.authorization: "Bearer from-the-file"],
                body: AdminFixture.body(large)
            ) {
                #expect($0.status == .contentTooLarge)
            }
            try await client.execute(
                uri: "/v1/flags/orders", method: .put, headers: [.authorization: "Bearer from-the-file"],
                body: AdminFixture.body(#"{"enabled": false}"#)
            ) {
                #expect($0.status == .ok)
            }
        }
        let saved = try String(contentsOfFile: stateFile, encoding: .utf8)
        #expect(saved.contains("orders"), "the override is kept in admin.stateFile: \(saved)")
    }
}
