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
    let host: SluiceHost
    let actions: OperatorActions
    let token: String?
    let logger: Logger
    let library: MustacheLibrary
    let statics: [String: (type: String, body: String)]
    let sessions = Sessions()
    let audit = AuditCache()
    let loginFailures: LoginThrottle
    /// Keys the CSRF tokens of visitors who did not log in: derived from their cookie, kept nowhere.
    let csrfKey = SymmetricKey(size: .bits256)
    let secureCookies: Bool
    let publicReads: Bool
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
}
