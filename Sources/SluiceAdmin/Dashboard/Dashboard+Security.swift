import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mustache
import Sluice
import SluiceKafka
import Synchronization

/// Who may act: sessions, the login and its throttle, CSRF tokens, bearer tokens, same-origin checks.
extension Dashboard {
    struct Session: Sendable {
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
    final class Sessions: Sendable {
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

    static let cookieName = "sluice_session"

    /// The request's session: a logged-in one, or a visitor's (no server state; a browser with no usable cookie
    /// gets a new id, which the page sets).
    func session(of request: Request) -> Session {
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
    func cookie(_ id: String, for request: Request) -> String {
        let secure = secureCookies || request.headers[HTTPField.Name("X-Forwarded-Proto")!]?.lowercased() == "https"
        return "\(Self.cookieName)=\(id); Path=/; HttpOnly; SameSite=Strict\(secure ? "; Secure" : "")"
    }

    /// Logged-in sessions held now.
    var sessionCount: Int { sessions.count }

    func csrfMatches(_ form: [String: String], _ session: Session) -> Bool {
        !session.isNew && Self.constantTimeEqual(form["csrf"] ?? "", session.csrf)
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        var difference = x.count ^ y.count
        for index in 0..<min(x.count, y.count) { difference |= Int(x[index] ^ y[index]) }
        return difference == 0
    }

    func bearerValid(_ request: Request) -> Bool {
        guard let token, let presented = request.headers[.authorization] else { return false }
        return Self.constantTimeEqual(presented, "Bearer \(token)")
    }

    /// With a token and reads not public, a visitor who did not log in (nor sent the bearer header) is sent to
    /// the login page: the pages show handler error texts and the group's layout.
    func loginFirst(_ request: Request) -> Response? {
        guard token != nil, !publicReads, !session(of: request).authenticated, !bearerValid(request) else { return nil }
        return redirect("/login")
    }

    /// Why an action may not run: a cross-site request, a missing or wrong CSRF token, no login.
    func refuseAction(_ request: Request, _ form: [String: String]) -> Response? {
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

    func login(_ request: Request, client: String) async throws -> Response {
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
}
