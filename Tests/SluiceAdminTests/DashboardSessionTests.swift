import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import SluiceKafka
import Testing

@testable import Sluice
@testable import SluiceAdmin

/// The dashboard's sessions and logins as someone on the admin port meets them: requests without cookies, a
/// planted session id, guessed tokens, a burst of audit page loads.
@Suite("Dashboard sessions, logins and the audit page under hostile traffic", .timeLimit(.minutes(2)))
struct DashboardSessionTests {
    static func cookie(_ response: TestResponse) -> String? {
        response.headers[.setCookie]?.split(separator: ";").first.map(String.init)
    }

    static func csrf(_ response: TestResponse) -> String? { csrf(String(buffer: response.body)) }

    static func csrf(_ html: String) -> String? {
        guard let range = html.range(of: #"name="csrf" value=""#) else { return nil }
        return String(html[range.upperBound...].prefix { $0 != "\"" })
    }

    @Test(
        "500 requests without a cookie keep no session; a login makes one with a new id; the old id stays logged out; 5 wrong tokens lock logins for a minute"
    )
    func sessionsOnlyFromALogin() async throws {
        let host = AdminFixture.host(stateFile: AdminFixture.stateFile(), token: "s3cret")
        let server = try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
        let app = Application(router: server.makeRouter())
        try await app.test(.router) { client in
            for _ in 0..<500 {
                try await client.execute(uri: "/", method: .get) {
                    #expect($0.status == .seeOther, "the pages need a login")
                }
                try await client.execute(uri: "/login", method: .get) { #expect(Self.cookie($0) != nil) }
            }
            #expect(server.dashboard.sessionCount == 0, "a visitor costs the host no state")

            let (visitor, token) = try await client.execute(uri: "/login", method: .get) {
                (Self.cookie($0)!, Self.csrf($0)!)
            }
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
            try await client.execute(uri: "/", method: .get, headers: [.cookie: session]) {
                #expect(String(buffer: $0.body).contains("Log out"))
            }
            try await client.execute(uri: "/", method: .get, headers: [.cookie: visitor]) {
                #expect($0.status == .seeOther)
            }
            // Behind a TLS proxy the cookie is Secure.
            try await client.execute(
                uri: "/login", method: .get, headers: [HTTPField.Name("X-Forwarded-Proto")!: "https"]
            ) {
                #expect($0.headers[.setCookie]?.hasSuffix("; Secure") == true)
            }

            for _ in 0..<5 { #expect(try await login("guess").status == .unauthorized) }
            let locked = try await login("s3cret")
            #expect(
                locked.status == .tooManyRequests, "the right token waits too: nothing tells a guesser it was right")
            #expect(String(buffer: locked.body).contains("too many failed logins"))
            #expect(server.dashboard.sessionCount == 1)
        }
    }

    /// One HTTP/1.1 request sent from `source` (a loopback address of this machine) to the server on `port`;
    /// the whole answer. The blocking socket calls run on a thread of their own, never on Swift's cooperative
    /// pool (two threads here: one held in a read starves every task of the test process, the server included).
    static func request(from source: String, port: Int, _ text: String) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try blockingRequest(from: source, port: port, text) })
            }
        }
    }

    private static func blockingRequest(from source: String, port: Int, _ text: String) throws -> String {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw SluiceError(code: .state, message: "socket: \(errno)") }
        defer { close(descriptor) }
        // A ceiling for a hung server, never a promise about speed.
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        func address(_ host: String, _ port: Int) -> sockaddr_in {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, host, &address.sin_addr)
            return address
        }
        var local = address(source, 0)
        var remote = address("127.0.0.1", port)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        let connected = withUnsafePointer(to: &remote) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, connected == 0 else {
            throw SluiceError(code: .state, message: "bind \(bound) / connect \(connected): \(errno)")
        }
        let bytes = Array(text.utf8)
        guard write(descriptor, bytes, bytes.count) == bytes.count else {
            throw SluiceError(code: .state, message: "write: \(errno)")
        }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = read(descriptor, &buffer, buffer.count)
            if count <= 0 { break }
            answer += buffer.prefix(count)
        }
        return String(decoding: answer, as: UTF8.self)
    }

    @Test(
        "failed logins are limited per client address: 5 wrong tokens from one lock it out for a minute, while another address logs in; all addresses together get at most 50 failures a minute"
    )
    func loginLimitPerClient() async throws {
        let host = AdminFixture.host(stateFile: AdminFixture.stateFile(), token: "s3cret")
        let server = try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
        let app = Application(
            router: server.makeRouter(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let port = try #require(client.port)
            func login(from source: String, _ secret: String) async throws -> String {
                let form = try await Self.request(
                    from: source, port: port, "GET /login HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                let cookie = try #require(
                    form.split(separator: "\r\n").first { $0.lowercased().hasPrefix("set-cookie: sluice_session=") }?
                        .dropFirst("set-cookie: ".count).split(separator: ";").first)
                let token = try #require(Self.csrf(form) as String?)
                let body = "csrf=\(token)&name=ann&token=\(secret)"
                return try await Self.request(
                    from: source, port: port,
                    "POST /login HTTP/1.1\r\nHost: h\r\nConnection: close\r\nCookie: \(cookie)\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                )
            }
            for _ in 0..<5 { #expect(try await login(from: "127.0.0.2", "guess").hasPrefix("HTTP/1.1 401")) }
            #expect(
                try await login(from: "127.0.0.2", "s3cret").hasPrefix("HTTP/1.1 429"),
                "the guessing address waits, even with the right token")
            #expect(try await login(from: "127.0.0.3", "s3cret").hasPrefix("HTTP/1.1 303"), "another address logs in")
        }
        // All addresses together: the 51st failure in a minute waits, from whichever address.
        let throttle = Dashboard.LoginThrottle()
        let now = ContinuousClock.now
        for index in 0..<50 { throttle.failed(client: "10.0.\(index / 250).\(index % 250)", now: now) }
        #expect(throttle.wait(client: "10.9.9.9", now: now) != nil, "a new address waits once 50 failed in the minute")
        #expect(throttle.wait(client: "10.0.0.1", now: now + .seconds(30)) != nil)
        #expect(throttle.wait(client: "10.9.9.9", now: now + .seconds(61)) == nil, "and tries again after it")
    }

    @Test("no token and a listener beyond loopback: the admin server refuses to start; on loopback it starts open")
    func noTokenBeyondLoopback() throws {
        for (listen, starts) in [
            ("0.0.0.0:8080", false), ("10.1.2.3:8080", false), ("[::]:8080", false), ("127.0.0.1:0", true),
            ("localhost:0", true), ("[::1]:0", true),
        ] {
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
        let host = AdminFixture.host(
            bootstrap: cluster.bootstrapServers, stateFile: AdminFixture.stateFile(), topics: ["orders"])
        var configuration = host.configuration
        configuration.control.enabled = true
        let controlled = SluiceHost(configuration: configuration, logger: AdminFixture.logger)
        controlled.register("orders", NoopHandler())
        let server = try AdminServer(host: controlled, registry: AdminFixture.registry, logger: AdminFixture.logger)
        let app = Application(router: server.makeRouter())
        try await app.test(.router) { client in
            try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        try await client.execute(
                            uri: "/audit", method: .get, headers: [.authorization: "Bearer s3cret"]
                        ) { $0.status }
                    }
                }
                for try await status in group { #expect(status == .ok) }
            }
        }
        #expect(await server.dashboard.audit.reads == 1)
    }

    @Test("the audit page lists the control records the host rejected, with key, offset and reason, as text")
    func rejectedRecordsShown() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        var configuration = AdminFixture.host(
            bootstrap: cluster.bootstrapServers, stateFile: AdminFixture.stateFile(), topics: ["orders"]
        ).configuration
        configuration.control.enabled = true
        try cluster.createTopic(configuration.controlTopic, partitions: 1)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers),
            logger: AdminFixture.logger)
        _ = try await producer.send(
            ProducerRecord(
                topic: configuration.controlTopic, partition: 0, key: Array("host/<b>forged</b>".utf8),
                value: Array(#"{"v":1,"applied":1,"atMillis":-9223372036854775808}"#.utf8)))
        await producer.close()
        let host = SluiceHost(configuration: configuration, logger: AdminFixture.logger)
        host.register("orders", NoopHandler())
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + .seconds(60)
        while (host.control?.rejected.count ?? 0) < 1, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(host.control?.rejected.count == 1)
        let server = try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
        let app = Application(router: server.makeRouter())
        try await app.test(.router) { client in
            try await client.execute(uri: "/audit", method: .get, headers: [.authorization: "Bearer s3cret"]) {
                response in
                let html = String(buffer: response.body)
                #expect(html.contains("1 since this host started"))
                #expect(html.contains("host/&lt;b&gt;forged&lt;/b&gt;") && html.contains("range"), "\(html)")
            }
        }
        host.shutdown()
        try await running.value
    }
}
