import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
@testable import Sluice
@testable import SluiceAdmin
import SluiceKafka
import Testing

/// The dashboard's sessions and logins as someone on the admin port meets them: requests without cookies, a
/// planted session id, guessed tokens, a burst of audit page loads.
@Suite("Dashboard sessions, logins and the audit page under hostile traffic", .timeLimit(.minutes(2)))
struct DashboardSessionTests {
    static func cookie(_ response: TestResponse) -> String? {
        response.headers[.setCookie]?.split(separator: ";").first.map(String.init)
    }

    static func csrf(_ response: TestResponse) -> String? {
        let html = String(buffer: response.body)
        guard let range = html.range(of: #"name="csrf" value=""#) else { return nil }
        return String(html[range.upperBound...].prefix { $0 != "\"" })
    }

    @Test("500 requests without a cookie keep no session; a login makes one with a new id; the old id stays logged out; 5 wrong tokens lock logins for a minute")
    func sessionsOnlyFromALogin() async throws {
        let host = AdminFixture.host(stateFile: AdminFixture.stateFile(), token: "s3cret")
        let server = try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
        let app = Application(router: server.makeRouter())
        try await app.test(.router) { client in
            for _ in 0..<500 {
                try await client.execute(uri: "/", method: .get) { #expect($0.status == .seeOther, "the pages need a login") }
                try await client.execute(uri: "/login", method: .get) { #expect(Self.cookie($0) != nil) }
            }
            #expect(server.dashboard.sessionCount == 0, "a visitor costs the host no state")

            let (visitor, token) = try await client.execute(uri: "/login", method: .get) { (Self.cookie($0)!, Self.csrf($0)!) }
            func login(_ secret: String, cookie: String = visitor) async throws -> TestResponse {
                try await client.execute(
                    uri: "/login", method: .post,
                    headers: [.cookie: cookie, .contentType: "application/x-www-form-urlencoded"],
                    body: ByteBuffer(string: "csrf=\(token)&name=ann&token=\(secret)"))
            }
            let loggedIn = try await login("s3cret")
            #expect(loggedIn.status == .seeOther)
            let session = try #require(Self.cookie(loggedIn))
            #expect(session != visitor, "a new id at login")
            #expect(server.dashboard.sessionCount == 1)
            try await client.execute(uri: "/", method: .get, headers: [.cookie: session]) { #expect(String(buffer: $0.body).contains("Log out")) }
            try await client.execute(uri: "/", method: .get, headers: [.cookie: visitor]) { #expect($0.status == .seeOther) }
            // Behind a TLS proxy the cookie is Secure.
            try await client.execute(uri: "/login", method: .get, headers: [HTTPField.Name("X-Forwarded-Proto")!: "https"]) {
                #expect($0.headers[.setCookie]?.hasSuffix("; Secure") == true)
            }

            for _ in 0..<5 { #expect(try await login("guess").status == .unauthorized) }
            let locked = try await login("s3cret")
            #expect(locked.status == .tooManyRequests, "the right token waits too: nothing tells a guesser it was right")
            #expect(String(buffer: locked.body).contains("too many failed logins"))
            #expect(server.dashboard.sessionCount == 1)
        }
    }

    @Test("no token and a listener beyond loopback: the admin server refuses to start; on loopback it starts open")
    func noTokenBeyondLoopback() throws {
        for (listen, starts) in [("0.0.0.0:8080", false), ("10.1.2.3:8080", false), ("[::]:8080", false), ("127.0.0.1:0", true), ("localhost:0", true), ("[::1]:0", true)] {
            let host = AdminFixture.host(stateFile: AdminFixture.stateFile(), token: nil)
            var configuration = host.configuration
            configuration.admin.listen = listen
            let configured = SluiceHost(configuration: configuration, logger: AdminFixture.logger)
            if starts {
                _ = try AdminServer(host: configured, registry: AdminFixture.registry, logger: AdminFixture.logger)
            } else {
                let error = #expect(throws: SluiceError.self, "\(listen)") {
                    _ = try AdminServer(host: configured, registry: AdminFixture.registry, logger: AdminFixture.logger)
                }
                #expect(error?.message.contains("no admin.token is set") == true)
            }
        }
    }

    @Test("20 audit pages at once read the audit topic once")
    func auditPagesShareOneRead() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        let host = AdminFixture.host(bootstrap: cluster.bootstrapServers, stateFile: AdminFixture.stateFile(), topics: ["orders"])
        var configuration = host.configuration
        configuration.control.enabled = true
        let controlled = SluiceHost(configuration: configuration, logger: AdminFixture.logger)
        controlled.register("orders", NoopHandler())
        let server = try AdminServer(host: controlled, registry: AdminFixture.registry, logger: AdminFixture.logger)
        let app = Application(router: server.makeRouter())
        try await app.test(.router) { client in
            try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                for _ in 0..<20 {
                    group.addTask { try await client.execute(uri: "/audit", method: .get, headers: [.authorization: "Bearer s3cret"]) { $0.status } }
                }
                for try await status in group { #expect(status == .ok) }
            }
        }
        #expect(await server.dashboard.audit.reads == 1)
    }

    @Test("the audit page lists the control records the host rejected, with key, offset and reason, as text")
    func rejectedRecordsShown() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        var configuration = AdminFixture.host(bootstrap: cluster.bootstrapServers, stateFile: AdminFixture.stateFile(), topics: ["orders"]).configuration
        configuration.control.enabled = true
        try cluster.createTopic(configuration.controlTopic, partitions: 1)
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers), logger: AdminFixture.logger)
        _ = try await producer.send(
            ProducerRecord(
                topic: configuration.controlTopic, partition: 0, key: Array("host/<b>forged</b>".utf8),
                value: Array(#"{"v":1,"applied":1,"atMillis":-9223372036854775808}"#.utf8)))
        await producer.close()
        let host = SluiceHost(configuration: configuration, logger: AdminFixture.logger)
        host.register("orders", NoopHandler())
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + .seconds(60)
        while (host.control?.rejected.count ?? 0) < 1, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(host.control?.rejected.count == 1)
        let server = try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
        let app = Application(router: server.makeRouter())
        try await app.test(.router) { client in
            try await client.execute(uri: "/audit", method: .get, headers: [.authorization: "Bearer s3cret"]) { response in
                let html = String(buffer: response.body)
                #expect(html.contains("1 since this host started"))
                #expect(html.contains("host/&lt;b&gt;forged&lt;/b&gt;") && html.contains("range"), "\(html)")
            }
        }
        host.shutdown()
        try await running.value
    }
}
