import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mustache
import Sluice
import SluiceKafka
import Synchronization

/// The operator dashboard served at `/` by the admin server (docs/architecture.md §13): the group's hosts and
/// shards, why each shard is paused, quarantines with their crash reports, the audit timeline, and actions
/// (flag off/on/rate, reset, skip, dead-letter) previewed before they are confirmed.
///
/// Server-rendered from Mustache templates (every value HTML-escaped); readable without JavaScript, refreshed
/// every few seconds with it. Reads follow the API's rules (open); every action needs the admin token (a
/// login form sets an HttpOnly, SameSite=Strict session cookie, or a bearer header), a per-session CSRF token,
/// and a same-origin `Sec-Fetch-Site` when the browser sends one.
final class Dashboard: Sendable {
    private let host: SluiceHost
    private let actions: OperatorActions
    private let token: String?
    private let logger: Logger
    private let library: MustacheLibrary
    private let statics: [String: (type: String, body: String)]
    private let sessions = Sessions()
    let audit = AuditCache()
    private let loginFailures: LoginThrottle
    /// Keys the CSRF tokens of visitors who did not log in: derived from their cookie, kept nowhere.
    private let csrfKey = SymmetricKey(size: .bits256)
    private let secureCookies: Bool
    private let publicReads: Bool
    let history = LagHistory()

    init(host: SluiceHost, actions: OperatorActions, token: String?, publicReads: Bool = false, logger: Logger) throws {
        self.host = host
        self.publicReads = publicReads
        self.secureCookies = host.configuration.admin.secureCookies
        self.actions = actions
        self.token = token
        self.logger = logger
        self.loginFailures = LoginThrottle()
        guard let base = Bundle.module.resourceURL else {
            throw SluiceError(
                code: .configuration, message: "the dashboard's templates are missing (SluiceAdmin's resource bundle)")
        }
        var templates: [String: MustacheTemplate] = [:]
        let folder = base.appendingPathComponent("Templates")
        for name in try FileManager.default.contentsOfDirectory(atPath: folder.path) where name.hasSuffix(".mustache") {
            let text = try String(contentsOf: folder.appendingPathComponent(name), encoding: .utf8)
            templates[String(name.dropLast(".mustache".count))] = try MustacheTemplate(string: text)
        }
        library = MustacheLibrary(templates: templates)
        var statics: [String: (String, String)] = [:]
        for (name, type) in [
            ("dashboard.js", "text/javascript; charset=utf-8"), ("dashboard.css", "text/css; charset=utf-8"),
        ] {
            statics[name] = (
                type,
                try String(
                    contentsOf: base.appendingPathComponent("Static").appendingPathComponent(name), encoding: .utf8)
            )
        }
        self.statics = statics
    }

    // MARK: Routes

    func addRoutes(to router: Router<AdminRequestContext>) {
        router.get("/") { request, _ in
            if let login = self.loginFirst(request) { return login }
            return self.page(request, "shards", title: "Shards") { self.shardsPage(request) }
        }
        router.get("shards/:topic/:partition") { request, context in
            if let login = self.loginFirst(request) { return login }
            guard let topic = context.parameters.get("topic"),
                let partition = context.parameters.get("partition").flatMap(Int32.init)
            else {
                return self.page(request, "message", title: "Not found", status: .notFound) {
                    ["message": "no such shard"]
                }
            }
            return self.page(request, "shard", title: "\(topic)/\(partition)") {
                self.shardPage(TopicPartition(topic, partition))
            }
        }
        router.get("audit") { request, _ in
            if let login = self.loginFirst(request) { return login }
            let audit = await self.auditPage()
            return self.page(request, "audit", title: "Audit") { audit }
        }
        router.get("login") { request, _ in self.page(request, "login", title: "Log in") { [:] } }
        router.post("login") { request, context in try await self.login(request, client: context.client) }
        router.post("logout") { request, _ in
            let form = try await self.form(request)
            let session = self.session(of: request)
            if self.csrfMatches(form, session) { self.sessions.end(session.id) }
            return self.redirect("/")
        }
        router.post("actions/preview") { request, _ in try await self.action(request, confirm: false) }
        router.post("actions/apply") { request, _ in try await self.action(request, confirm: true) }
        router.get("static/:name") { _, context in
            guard let name = context.parameters.get("name"), let file = self.statics[name] else {
                return Response(status: .notFound)
            }
            var headers = HTTPFields()
            headers[.contentType] = file.type
            headers[.cacheControl] = "no-cache"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: file.body)))
        }
    }

    /// Records the group's lag for the sparklines every `interval`, until cancelled.
    func sample(every interval: Duration = .seconds(5)) async {
        while !Task.isCancelled {
            history.record(GroupView(host: host))
            try? await Task.sleep(for: interval)
        }
    }

    // MARK: Pages

    private func shardsPage(_ request: Request) -> [String: Any] {
        let view = GroupView(host: host)
        let topicFilter = request.uri.queryParameters.get("topic").flatMap { $0.isEmpty ? nil : $0 }
        let stateFilter = request.uri.queryParameters.get("state").flatMap { $0.isEmpty ? nil : $0 }
        let shown = view.shards.filter { shard in
            (topicFilter == nil || shard.topicPartition.topic == topicFilter)
                && (stateFilter == nil || shard.state == stateFilter)
        }
        let topics = Set(view.shards.map(\.topicPartition.topic)).sorted()
        let states = ["starting", "running", "draining", "off", "backingOff", "tripped", "stopped"]
        return [
            "hosts": view.hosts.map { host -> [String: Any] in
                [
                    "identity": host.identity, "this": host.isThis, "heartbeat": "\(host.heartbeatAgeSeconds) s ago",
                    "shards": host.shardCount,
                    "applied": host.applied.map(String.init) ?? "-", "up": host.upSeconds.map(Self.age) ?? "-",
                    "troubled": host.backingOffOrTripped, "crashes": host.shardCrashes, "restarts": host.shardRestarts,
                ]
            },
            "controlPlane": host.control != nil,
            "flags": host.flags.flags.sorted { $0.key < $1.key }.map { key, setting -> [String: Any] in
                [
                    "key": key.description, "value": Self.describe(setting), "source": setting.source,
                    "reason": setting.reason ?? "", "who": setting.who ?? "",
                ]
            },
            "topics": topics.map { ["name": $0, "selected": $0 == topicFilter] },
            "states": states.map { ["name": $0, "selected": $0 == stateFilter] },
            "shards": shown.map(row),
            "shownCount": shown.count, "totalCount": view.shards.count,
        ]
    }

    private func row(_ shard: GroupView.Shard) -> [String: Any] {
        var row: [String: Any] = [
            "shard": shard.topicPartition.description, "topic": shard.topicPartition.topic,
            "partition": shard.topicPartition.partition,
            "owner": shard.owner, "state": shard.state, "paused": !shard.reasons.isEmpty,
            "reasons": shard.reasons.map { ["name": $0.name, "why": $0.why] },
            "lag": shard.lag.map(String.init) ?? "-",
            "lagSeconds": shard.lagSeconds.map { String(format: "%.1f s", $0) } ?? "",
            "committed": shard.committed.map(String.init) ?? "-", "position": shard.position.map(String.init) ?? "-",
            "highWatermark": shard.highWatermark.map(String.init) ?? "-", "inFlight": shard.inFlight,
            "processed": shard.processed,
            "failed": shard.failed, "deadLettered": shard.deadLettered, "attempt": shard.attempt,
            "lastError": shard.lastError ?? "",
        ]
        // Sections test presence: absent keys, never empty strings.
        if let next = shard.nextProbeSeconds { row["nextProbe"] = String(format: "%.0f s", next.rounded(.up)) }
        if let rate = shard.rate { row["rate"] = ControlRecord.describeRate(rate) }
        if let points = history.sparkline(shard.topicPartition) { row["sparkline"] = points }
        if let quarantine = shard.quarantine {
            row["quarantine"] =
                [
                    "offset": quarantine.offset, "state": quarantine.state.rawValue, "summary": quarantine.summary,
                    "report": quarantine.report ?? "", "crashes": quarantine.crashes, "signal": quarantine.signal,
                    "releasable": quarantine.state == .quarantined || quarantine.state == .suspect,
                    "deadLetterable": host.configuration.topics[shard.topicPartition.topic]?.deadLetterTopic != nil,
                ] as [String: Any]
        }
        if let trip = shard.trip { row["trip"] = trip }
        return row
    }

    private func shardPage(_ topicPartition: TopicPartition) -> [String: Any] {
        let view = GroupView(host: host)
        guard let shard = view.shards.first(where: { $0.topicPartition == topicPartition }) else {
            return ["missing": true, "shard": topicPartition.description]
        }
        var context = row(shard)
        context["flag"] = Self.describe(host.flags.setting(for: topicPartition))
        return context
    }

    private func auditPage() async -> [String: Any] {
        var context: [String: Any] = [
            "sourceErrors": host.flags.lastErrors.sorted { $0.key < $1.key }.map {
                ["source": $0.key, "error": $0.value]
            }
        ]
        guard let control = host.control else {
            context["noControlPlane"] = true
            return context
        }
        let rejected = control.rejected
        context["rejectedCount"] = rejected.count
        context["rejected"] = rejected.latest.reversed().map {
            ["offset": $0.offset, "key": $0.key, "reason": $0.reason.rawValue, "detail": $0.detail]
        }
        let topic = ControlPlaneWriter.auditTopic(forControl: control.topic)
        let (host, logger) = (self.host, self.logger)
        // One read of the audit topic serves every request within two seconds of it, and requests that come
        // while it runs wait for it: a burst of requests opens one reader, not one each.
        let (entries, error) = await audit.read(maxAge: .seconds(2)) {
            let entries = Mutex<[AuditEntry]>([])
            do {
                let reader = try ControlTopicReader(
                    bootstrapServers: host.configuration.kafka.bootstrap, topic: topic,
                    properties: host.configuration.controlProperties, logger: logger
                ) { record in
                    if let value = record.value, let entry = AuditEntry(decoding: value) {
                        entries.withLock { $0.append(entry) }
                    }
                }
                try await reader.load(timeout: .seconds(5))
                await reader.close()
                return (entries.withLock { Array($0.suffix(500)) }, nil)
            } catch {
                return (
                    entries.withLock { Array($0.suffix(500)) }, "the audit topic '\(topic)' could not be read: \(error)"
                )
            }
        }
        if let error { context["auditError"] = error }
        context["entries"] = entries.reversed().map { entry -> [String: Any] in
            [
                "at": Date(timeIntervalSince1970: Double(entry.atMilliseconds) / 1000).formatted(.iso8601),
                "who": entry.who ?? "-",
                "subject": entry.subject, "before": entry.before ?? "?", "after": entry.after,
                "why": entry.reason ?? "",
            ]
        }
        return context
    }

    // MARK: Actions

    /// The fields of an action form.
    private struct ActionRequest {
        var action: String
        var target: String
        var value: String
        var offset: Int64?
        var reason: String
    }

    private func action(_ request: Request, confirm: Bool) async throws -> Response {
        let form = try await self.form(request)
        if let refusal = refuseAction(request, form) { return refusal }
        let input = ActionRequest(
            action: form["action"] ?? "", target: (form["target"] ?? "").trimmingCharacters(in: .whitespaces),
            value: form["value"] ?? "",
            offset: form["offset"].flatMap { Int64($0) },
            reason: (form["reason"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines))
        func fail(_ message: String, _ status: HTTPResponse.Status = .badRequest) -> Response {
            page(request, "message", title: "Not done", status: status) { ["message": message, "back": true] }
        }
        guard !input.reason.isEmpty else {
            return fail("say why: every change is kept in the audit log with its reason")
        }
        var context: [String: Any] = [
            "action": input.action, "target": input.target, "value": input.value,
            "offset": input.offset.map(String.init) ?? "",
            "reason": input.reason,
        ]
        let who = "\(session(of: request).name ?? (bearerValid(request) ? "token holder" : "anonymous")) via dashboard"
        switch input.action {
        case "flag":
            let key: FlagKey
            do {
                key = try FlagKey(parsing: input.target)
            } catch {
                return fail((error as? SluiceError)?.message ?? "\(error)")
            }
            let rate = ControlRecord.parseRate(input.value)
            guard ["on", "off", "unset"].contains(input.value) || rate != nil else {
                return fail("the value must be on, off, unset or a rate such as 200/s, got '\(input.value)'")
            }
            let enabled: Bool? = input.value == "unset" ? nil : (rate != nil ? true : input.value == "on")
            context["description"] = "set flag \(key) to \(input.value)"
            guard confirm else {
                let changes = GroupView(host: host).preview(key, enabled: enabled, rate: rate)
                context["changes"] = changes.map {
                    [
                        "shard": $0.shard.topicPartition.description, "owner": $0.shard.owner, "state": $0.shard.state,
                        "change": $0.change,
                    ]
                }
                context["changeCount"] = changes.filter(\.changes).count
                return page(request, "preview", title: "Confirm") { context }
            }
            do throws(OperatorActions.Refusal) {
                let offset = try await actions.setFlag(
                    key, enabled: enabled, rate: rate, reason: input.reason, who: who)
                return await result(request, context, offset: offset)
            } catch {
                return fail(error.message, .conflict)
            }
        case "reset", "skip", "deadLetter":
            guard let topicPartition = TopicPartition(parsing: input.target) else {
                return fail("a shard is TOPIC/PARTITION, got '\(input.target)'")
            }
            context["description"] =
                [
                    "reset": "reset \(topicPartition) (a quarantined message on it is tried again)",
                    "skip":
                        "skip the quarantined message at offset \(input.offset.map(String.init) ?? "?") of \(topicPartition): committed, never handled",
                    "deadLetter":
                        "dead-letter the quarantined message at offset \(input.offset.map(String.init) ?? "?") of \(topicPartition)",
                ][input.action]
            guard confirm else {
                let view = GroupView(host: host)
                context["changes"] = view.shards.filter { $0.topicPartition == topicPartition }.map {
                    [
                        "shard": $0.topicPartition.description, "owner": $0.owner, "state": $0.state,
                        "change": input.action == "reset" ? "start again now" : "release the message, then go on",
                    ]
                }
                context["changeCount"] = (context["changes"] as? [Any])?.count ?? 0
                return page(request, "preview", title: "Confirm") { context }
            }
            do throws(OperatorActions.Refusal) {
                if input.action == "reset" {
                    let (_, offset) = try await actions.reset(topicPartition, who: who)
                    return await result(request, context, offset: offset)
                }
                guard let offset = input.offset else { return fail("the quarantined message's offset is missing") }
                try await actions.release(
                    topicPartition, as: input.action == "skip" ? .skip : .deadLetter, offset: offset, who: who,
                    reason: input.reason)
                return await result(request, context, offset: nil)
            } catch {
                return fail(error.message, .conflict)
            }
        default:
            return fail("unknown action '\(input.action)'")
        }
    }

    /// The result of a change: which hosts applied it (with the control plane, waiting up to 10 s for every
    /// live host's record to say so).
    private func result(_ request: Request, _ context: [String: Any], offset: Int64?) async -> Response {
        // The change is in the audit topic now: the next audit page reads it, not the last read.
        await audit.invalidate()
        var context = context
        if let offset, let control = host.control {
            let deadline = ContinuousClock.now + .seconds(10)
            var rows: [[String: Any]] = []
            while true {
                let now = Int64(Date().timeIntervalSince1970 * 1000)
                let live = control.hosts.filter { $0.value.isLive(now: now, window: GroupView.liveMilliseconds) }
                rows = live.sorted { $0.key < $1.key }.map { ["host": $0.key, "applied": $0.value.applied > offset] }
                if rows.allSatisfy({ $0["applied"] as? Bool == true }) || ContinuousClock.now >= deadline { break }
                try? await Task.sleep(for: .milliseconds(50))
            }
            context["acknowledgements"] = rows
            context["appliedCount"] = rows.filter { $0["applied"] as? Bool == true }.count
            context["hostCount"] = rows.count
            context["controlOffset"] = offset
        } else {
            context["local"] = true
        }
        return page(request, "result", title: "Done") { context }
    }

    // MARK: Security

    private struct Session: Sendable {
        let id: String
        let csrf: String
        var authenticated: Bool
        /// Who the operator said they are at login, for the audit log.
        var name: String?
        var expires: ContinuousClock.Instant
        /// Whether the browser sent no usable cookie: the page sets one.
        var isNew = false
    }

    /// Logged-in sessions, in memory (a restart logs everyone out): made only by a successful login, with a new
    /// id (never the one the browser had before), for 8 hours, at most `capacity` (the oldest goes first).
    /// Visitors who did not log in have no entry: their CSRF token is derived from their cookie.
    private final class Sessions: Sendable {
        static let capacity = 1_000
        static let lifetime = Duration.seconds(8 * 3600)
        private let table = Mutex<[String: Session]>([:])

        func find(_ id: String) -> Session? {
            table.withLock { table in
                guard let session = table[id], session.expires > .now else {
                    table[id] = nil
                    return nil
                }
                return session
            }
        }

        func start(name: String?) -> Session {
            let session = Session(
                id: Dashboard.randomToken(), csrf: Dashboard.randomToken(), authenticated: true, name: name,
                expires: .now + Self.lifetime)
            table.withLock { table in
                if table.count >= Self.capacity {
                    let now = ContinuousClock.now
                    table = table.filter { $0.value.expires > now }
                    while table.count >= Self.capacity,
                        let oldest = table.min(by: { $0.value.expires < $1.value.expires })?.key
                    { table[oldest] = nil }
                }
                table[session.id] = session
            }
            return session
        }

        var count: Int { table.withLock { $0.count } }

        func end(_ id: String) { table.withLock { $0[id] = nil } }
    }

    /// Failed logins: at most `perClient` in a minute from one client address, and at most `overall` in a minute
    /// from all of them (many addresses, such as an IPv6 range, do not multiply the guesses); more are refused
    /// until the minute has passed. A token guessed one request at a time takes for ever; operators can still
    /// use the bearer header or the CLI. Behind a proxy every client is the proxy's address.
    final class LoginThrottle: Sendable {
        let perClient: Int
        let overall: Int
        /// The most client addresses remembered (their failures in the last minute); beyond, the overall limit holds.
        static let maximumClients = 10_000
        private struct State {
            var byClient: [String: [ContinuousClock.Instant]] = [:]
            var all: [ContinuousClock.Instant] = []
        }
        private let state = Mutex(State())

        init(perClient: Int = 5, overall: Int = 50) {
            self.perClient = perClient
            self.overall = overall
        }

        /// Seconds until `client` may try again; nil when it may now.
        func wait(client: String, now: ContinuousClock.Instant = .now) -> Int? {
            state.withLock { state in
                state.all.removeAll { now - $0 > .seconds(60) }
                if let failures = state.byClient[client] {
                    let recent = failures.filter { now - $0 <= .seconds(60) }
                    state.byClient[client] = recent.isEmpty ? nil : recent
                }
                let mine = state.byClient[client] ?? []
                let blocking: ContinuousClock.Instant? =
                    if mine.count >= perClient { mine.first } else if state.all.count >= overall {
                        state.all.first
                    } else { nil }
                guard let blocking else { return nil }
                return Int((blocking + .seconds(60) - now).components.seconds) + 1
            }
        }

        func failed(client: String, now: ContinuousClock.Instant = .now) {
            state.withLock { state in
                state.all.append(now)
                if state.byClient[client] == nil, state.byClient.count >= Self.maximumClients {
                    state.byClient = state.byClient.filter { $0.value.contains { now - $0 <= .seconds(60) } }
                }
                if state.byClient[client] != nil || state.byClient.count < Self.maximumClients {
                    state.byClient[client, default: []].append(now)
                }
            }
        }
    }

    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    private static let cookieName = "sluice_session"

    /// The request's session: a logged-in one, or a visitor's (no server state; a browser with no usable cookie
    /// gets a new id, which the page sets).
    private func session(of request: Request) -> Session {
        let cookie = request.cookies[Self.cookieName]?.value
        if let cookie, let session = sessions.find(cookie) { return session }
        let isValid =
            cookie.map {
                $0.utf8.count == 64 && $0.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
            } ?? false
        let id = isValid ? cookie! : Self.randomToken()
        let csrf = HMAC<SHA256>.authenticationCode(for: Array(id.utf8), using: csrfKey).map {
            String(format: "%02x", $0)
        }.joined()
        return Session(
            id: id, csrf: csrf, authenticated: token == nil, name: nil, expires: .now + Sessions.lifetime,
            isNew: !isValid)
    }

    /// The session cookie's header: HttpOnly, SameSite=Strict, and Secure when configured (`admin.secureCookies`)
    /// or when the request came through TLS (a proxy's `X-Forwarded-Proto: https`).
    private func cookie(_ id: String, for request: Request) -> String {
        let secure = secureCookies || request.headers[HTTPField.Name("X-Forwarded-Proto")!]?.lowercased() == "https"
        return "\(Self.cookieName)=\(id); Path=/; HttpOnly; SameSite=Strict\(secure ? "; Secure" : "")"
    }

    /// Logged-in sessions held now.
    var sessionCount: Int { sessions.count }

    private func csrfMatches(_ form: [String: String], _ session: Session) -> Bool {
        !session.isNew && Self.constantTimeEqual(form["csrf"] ?? "", session.csrf)
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        var difference = x.count ^ y.count
        for index in 0..<min(x.count, y.count) { difference |= Int(x[index] ^ y[index]) }
        return difference == 0
    }

    private func bearerValid(_ request: Request) -> Bool {
        guard let token, let presented = request.headers[.authorization] else { return false }
        return Self.constantTimeEqual(presented, "Bearer \(token)")
    }

    /// With a token and reads not public, a visitor who did not log in (nor sent the bearer header) is sent to
    /// the login page: the pages show handler error texts and the group's layout.
    private func loginFirst(_ request: Request) -> Response? {
        guard token != nil, !publicReads, !session(of: request).authenticated, !bearerValid(request) else { return nil }
        return redirect("/login")
    }

    /// Why an action may not run: a cross-site request, a missing or wrong CSRF token, no login.
    private func refuseAction(_ request: Request, _ form: [String: String]) -> Response? {
        if let site = request.headers[HTTPField.Name("Sec-Fetch-Site")!], !["same-origin", "none"].contains(site) {
            logger.warning("dashboard action refused: cross-site request", metadata: ["sluice.fetchSite": "\(site)"])
            return page(request, "message", title: "Refused", status: .forbidden) {
                ["message": "refused: a cross-site request (Sec-Fetch-Site: \(site))"]
            }
        }
        // A bearer token is not sent by a browser on its own: no CSRF token needed with it.
        if bearerValid(request) { return nil }
        let session = session(of: request)
        guard csrfMatches(form, session) else {
            logger.warning(
                "dashboard action refused: missing or wrong CSRF token",
                metadata: ["sluice.caller": "\(caller(request))"])
            return page(request, "message", title: "Refused", status: .forbidden) {
                [
                    "message": "refused: the form's CSRF token is missing or wrong (reload the page and try again)",
                    "back": true,
                ]
            }
        }
        if token != nil, !session.authenticated {
            logger.warning("dashboard action refused: not logged in", metadata: ["sluice.caller": "\(caller(request))"])
            return page(request, "login", title: "Log in", status: .unauthorized) {
                ["message": "log in with the admin token to make changes"]
            }
        }
        return nil
    }

    private func login(_ request: Request, client: String) async throws -> Response {
        let form = try await self.form(request)
        guard csrfMatches(form, session(of: request)) else {
            return page(request, "login", title: "Log in", status: .forbidden) {
                ["message": "the form expired; try again"]
            }
        }
        if let wait = loginFailures.wait(client: client) {
            logger.warning(
                "dashboard login refused: too many failed logins",
                metadata: ["sluice.caller": "\(caller(request))", "sluice.client": "\(client)"])
            return page(request, "login", title: "Log in", status: .tooManyRequests) {
                ["message": "too many failed logins; try again in \(wait) s"]
            }
        }
        guard let token, Self.constantTimeEqual(form["token"] ?? "", token) else {
            if token != nil { loginFailures.failed(client: client) }
            logger.warning("dashboard login refused: wrong token", metadata: ["sluice.caller": "\(caller(request))"])
            return page(request, "login", title: "Log in", status: .unauthorized) {
                ["message": token == nil ? "this host has no admin token: changes need no login" : "wrong token"]
            }
        }
        let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        // A new session id at login: an id the browser had before (perhaps planted) never becomes a logged-in one.
        let session = sessions.start(name: name.isEmpty ? nil : String(name.prefix(80)))
        logger.notice("dashboard login", metadata: ["sluice.caller": "\(caller(request))", "sluice.who": "\(name)"])
        var response = redirect("/")
        response.headers[.setCookie] = cookie(session.id, for: request)
        return response
    }

    // MARK: Rendering

    /// Renders `template` within the layout; starts a session (and its cookie) for a browser that has none.
    private func page(
        _ request: Request, _ template: String, title: String, status: HTTPResponse.Status = .ok,
        _ body: () -> [String: Any]
    ) -> Response {
        var headers = HTTPFields()
        let session = self.session(of: request)
        if session.isNew { headers[.setCookie] = cookie(session.id, for: request) }
        var context = body()
        context["title"] = title
        context["group"] = host.configuration.kafka.group
        context["identity"] = host.identity
        context["csrf"] = session.csrf
        context["loggedIn"] = token != nil && session.authenticated
        context["needsLogin"] = token != nil && !session.authenticated
        let html = library.render(context, withTemplate: template) ?? "template \(template) missing"
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-store"
        headers[HTTPField.Name("Content-Security-Policy")!] =
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'"
        headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    private func redirect(_ location: String) -> Response {
        var headers = HTTPFields()
        headers[.location] = location
        return Response(status: .seeOther, headers: headers)
    }

    /// An `application/x-www-form-urlencoded` body (at most 64 KB).
    private func form(_ request: Request) async throws -> [String: String] {
        var request = request
        let body = try await request.collectBody(upTo: 64 * 1024)
        var fields: [String: String] = [:]
        for pair in String(buffer: body).split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String {
                String(text).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(text)
            }
            fields[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return fields
    }

    private func caller(_ request: Request) -> String {
        request.headers[.userAgent].map { String($0.prefix(80)) } ?? "unknown"
    }

    static func describe(_ setting: FlagSetting) -> String {
        setting.rate.map(ControlRecord.describeRate) ?? (setting.enabled ? "on" : "off")
    }

    static func age(_ seconds: Int64) -> String {
        seconds < 120 ? "\(seconds) s" : seconds < 7200 ? "\(seconds / 60) min" : "\(seconds / 3600) h"
    }
}

/// The audit topic's latest entries, read once for every request within `maxAge` of the last read; requests
/// that come while a read runs share it.
actor AuditCache {
    private var last: (entries: [AuditEntry], error: String?, at: ContinuousClock.Instant)?
    private var running: Task<([AuditEntry], String?), Never>?
    /// Reads of the audit topic made.
    private(set) var reads = 0

    func read(maxAge: Duration, _ read: @escaping @Sendable () async -> ([AuditEntry], String?)) async -> (
        [AuditEntry], String?
    ) {
        if let last, ContinuousClock.now - last.at < maxAge { return (last.entries, last.error) }
        if let running { return await running.value }
        reads += 1
        let task = Task { await read() }
        running = task
        let result = await task.value
        running = nil
        last = (result.0, result.1, .now)
        return result
    }

    /// The next read goes to the topic (a change was just made here).
    func invalidate() { last = nil }
}
