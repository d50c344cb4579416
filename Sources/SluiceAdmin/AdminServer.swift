import Foundation
import Hummingbird
import Logging
import Prometheus
import ServiceLifecycle
import Sluice
import SluiceKafka
import Synchronization

/// The admin HTTP API of a `SluiceHost` (docs/architecture.md §9), a Hummingbird server run as a `Service` beside
/// the host:
///
/// | route | |
/// |---|---|
/// | `GET /healthz` | 200 while the host's loops make progress, 503 with the reasons otherwise |
/// | `GET /readyz` | 200 once the host joined its group, 503 with the reasons otherwise |
/// | `GET /metrics` | Prometheus text |
/// | `GET /v1/shards` | every shard: state, pause reasons, attempt, last error, offsets, lag, counts |
/// | `GET /v1/flags` | the flags in force, with their sources, and the flag sources' errors |
/// | `PUT /v1/flags/{key}` | body `{"enabled": false, "reason": "..."}`: an operator override (with the control plane on, written to the group's control topic) |
/// | `DELETE /v1/flags/{key}` | removes an operator override (or the control plane's flag) |
/// | `POST /v1/shards/{topic}/{partition}/reset` | resets a shard's breaker |
///
/// A flag key with a partition can be written as `/v1/flags/orders/3` or `/v1/flags/orders%2F3`. With a
/// token configured, every change needs `Authorization: Bearer <token>` (401 otherwise); reads stay open.
/// Operator overrides are kept in `admin.stateFile`, so a restart keeps them. Every change is logged with
/// the source, reason and caller (`X-Sluice-Caller`, else the user agent).
public struct AdminServer: Service {
    private let host: SluiceHost
    private let settings: SluiceConfiguration.Admin
    private let registry: PrometheusCollectorRegistry
    private let logger: Logger
    private let store: OperatorFlagStore?
    private let boundPort = BoundPort()
    /// With the control plane on, flag changes go to the group's control topic (every host applies them)
    /// instead of this host's memory and state file.
    private let controlWriter: ControlPlaneWriter?
    /// The changes an operator makes, shared with the dashboard.
    private var actions: OperatorActions {
        OperatorActions(host: host, controlWriter: controlWriter, store: store, logger: logger)
    }
    /// The operator dashboard at `/`.
    let dashboard: Dashboard

    /// Creates the server and loads the persisted operator overrides into `host.operatorFlags`.
    ///
    /// - Throws: `SluiceError` when the state file exists but cannot be read, naming the file.
    public init(
        host: SluiceHost, registry: PrometheusCollectorRegistry, logger: Logger = Logger(label: "sluice.admin")
    ) throws {
        self.host = host
        self.settings = host.configuration.admin
        self.registry = registry
        self.logger = logger
        if host.control != nil {
            self.store = nil
            self.controlWriter = try host.configuration.controlWriter(logger: logger)
        } else {
            self.controlWriter = nil
            self.store = settings.stateFile.map { OperatorFlagStore(path: $0, group: host.configuration.kafka.group) }
            for (key, setting) in try store?.load(logger: logger) ?? [:] {
                host.operatorFlags.set(key, enabled: setting.enabled, reason: setting.reason, rate: setting.rate)
            }
        }
        if settings.token == nil, !Self.isLoopback(settings.listen) {
            throw SluiceError(
                code: .configuration,
                message:
                    "admin.listen \(settings.listen) reaches beyond this machine and no admin.token is set: anyone who can reach the port could turn shards off; set admin.token, or listen on 127.0.0.1"
            )
        }
        dashboard = try Dashboard(
            host: host,
            actions: OperatorActions(host: host, controlWriter: controlWriter, store: store, logger: logger),
            token: settings.token, publicReads: settings.publicReads, logger: logger)
    }

    /// Serves until graceful shutdown.
    public func run() async throws {
        if host.worker != nil {
            // A worker process leaves the admin API to its supervisor (one port, one host to the outside), and
            // writes its metrics each second where the supervisor's `/metrics` reads them.
            while !Task.isShuttingDownGracefully, !Task.isCancelled {
                host.reportMetricsToSupervisor(registry.emitToBuffer())
                try? await Task.sleep(for: .seconds(1))
            }
            return
        }
        let parts = settings.listen.split(separator: ":")
        let address = BindAddress.hostname(String(parts[0]), port: Int(parts[1]) ?? 8080)
        let app = Application(
            router: makeRouter(),
            configuration: .init(address: address, serverName: "sluice-admin"),
            onServerRunning: { [boundPort, logger] channel in
                let port = channel.localAddress?.port
                boundPort.value.withLock { $0 = port }
                logger.info(
                    "admin API listening",
                    metadata: ["sluice.admin.address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
            },
            logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { [dashboard] in await dashboard.sample() }
            try await app.run()
            group.cancelAll()
        }
    }

    /// The port the server bound (useful with port 0), once it runs.
    public var port: Int? { boundPort.value.withLock { $0 } }

    /// The routes, for ``run()`` and for tests.
    public func makeRouter() -> Router<AdminRequestContext> {
        let router = Router(context: AdminRequestContext.self)
        dashboard.addRoutes(to: router)
        router.get("healthz") { _, _ in
            let health = host.health()
            // Stalled shards are a detail, not a failure: restarting the process rarely mends them (a broker
            // outage stalls every shard) and would only add churn.
            let stalled = host.shards.filter { $0.stalledSince != nil }.map { shard -> String in
                "\(shard.topicPartition) stalled for \(Int((.now - shard.stalledSince!).seconds)) s with lag \(shard.lag ?? 0)"
            }
            return json(
                health.healthy ? .ok : .serviceUnavailable,
                ["healthy": health.healthy, "reasons": health.reasons, "stalledShards": stalled])
        }
        router.get("readyz") { _, _ in
            let readiness = host.readiness
            return json(
                readiness.ready ? .ok : .serviceUnavailable, ["ready": readiness.ready, "reasons": readiness.reasons])
        }
        router.get("metrics") { request, _ in
            if let denied = authorizeRead(request, open: settings.publicReads || settings.publicMetrics) {
                return denied
            }
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            let workers = await host.freshWorkerMetrics()
            guard !workers.isEmpty else {
                return Response(
                    status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
            }
            // A supervisor's own metrics and its workers', each worker's labelled with its slot.
            let own = String(decoding: registry.emitToBuffer(), as: UTF8.self)
            let merged = WorkerMetrics.merge([(nil, own)] + workers.map { ($0.slot, $0.text) })
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: merged)))
        }
        router.get("v1/shards") { request, _ in
            if let denied = authorizeRead(request, open: settings.publicReads) { return denied }
            return host.workerSlots.isEmpty
                ? Self.shardsResponse(host.shards) : Self.shardsResponse(await host.freshWorkerShards())
        }
        router.get("v1/flags") { request, _ in
            if let denied = authorizeRead(request, open: settings.publicReads) { return denied }
            let flags = host.flags.flags.sorted { $0.key < $1.key }.map { key, setting -> [String: Any] in
                var entry: [String: Any] = [
                    "key": key.description, "enabled": setting.enabled, "source": setting.source,
                ]
                if let reason = setting.reason { entry["reason"] = reason }
                if let rate = setting.rate { entry["rate"] = rate }
                return entry
            }
            var sources: [String: Any] = [:]
            for source in host.flags.sources {
                var entry: [String: Any] = ["failures": host.flags.failureCounts[source.name] ?? 0]
                if let error = host.flags.lastErrors[source.name] { entry["lastError"] = error }
                sources[source.name] = entry
            }
            return json(.ok, ["flags": flags, "default": host.flags.defaultEnabled ? "on" : "off", "sources": sources])
        }
        router.put("v1/flags/:key") { request, context in
            try await setFlag(request, key: context.parameters.get("key") ?? "")
        }
        router.put("v1/flags/:key/:partition") { request, context in
            try await setFlag(
                request, key: "\(context.parameters.get("key") ?? "")/\(context.parameters.get("partition") ?? "")")
        }
        router.delete("v1/flags/:key") { request, context in
            await unsetFlag(request, key: context.parameters.get("key") ?? "")
        }
        router.delete("v1/flags/:key/:partition") { request, context in
            await unsetFlag(
                request, key: "\(context.parameters.get("key") ?? "")/\(context.parameters.get("partition") ?? "")")
        }
        router.post("v1/shards/:topic/:partition/reset") { request, context in
            if let denied = authorize(request) { return denied }
            let topicPartition: TopicPartition
            switch shard(context) {
            case .success(let parsed): topicPartition = parsed
            case .failure(let failure): return failure.response
            }
            do throws(OperatorActions.Refusal) {
                // A quarantined message is tried again: the quarantine goes (for the group), then the shard resets.
                let (released, offset) = try await actions.reset(topicPartition, who: caller(request))
                var answer: [String: Any] = ["reset": topicPartition.description, "quarantineReleased": released]
                if let offset { answer["controlOffset"] = offset }
                return json(.ok, answer)
            } catch {
                return refused(error)
            }
        }
        // A quarantined message released without a handler call: committed (skip), or written to the topic's
        // dead-letter topic with its crash report (dead-letter).
        for (path, release, answer) in [
            ("skip", Quarantine.Release.skip, "skipped"), ("dead-letter", .deadLetter, "deadLettered"),
        ] {
            router.post("v1/shards/:topic/:partition/\(path)") { request, context in
                if let denied = authorize(request) { return denied }
                let topicPartition: TopicPartition
                switch shard(context) {
                case .success(let parsed): topicPartition = parsed
                case .failure(let failure): return failure.response
                }
                let body: AdminRequestBodies.Release
                switch await decodeBody(
                    AdminRequestBodies.Release.self, request, like: #"{"offset": 42, "reason": "..."}"#)
                {
                case .success(let parsed): body = parsed
                case .failure(let failure): return failure.response
                }
                let offset = body.offset
                do throws(OperatorActions.Refusal) {
                    try await actions.release(
                        topicPartition, as: release, offset: offset, who: caller(request), reason: body.reason)
                } catch {
                    return refused(error)
                }
                return json(.ok, [answer: topicPartition.description, "offset": offset])
            }
        }
        return router
    }

    // MARK: Flags

    private func setFlag(_ request: Request, key rawKey: String) async throws -> Response {
        if let denied = authorize(request) { return denied }
        let key: FlagKey
        switch parseKey(rawKey) {
        case .success(let parsed): key = parsed
        case .failure(let failure): return failure.response
        }
        let body: AdminRequestBodies.Flag
        switch await decodeBody(AdminRequestBodies.Flag.self, request, like: #"{"enabled": false, "reason": "..."}"#) {
        case .success(let parsed): body = parsed
        case .failure(let failure): return failure.response
        }
        let (enabled, rate, reason) = (body.enabled, body.rate, body.reason)
        do throws(OperatorActions.Refusal) {
            let offset = try await actions.setFlag(
                key, enabled: enabled, rate: rate, reason: reason, who: caller(request))
            var entry: [String: Any] = [
                "key": key.description, "enabled": enabled, "source": offset == nil ? "admin" : "control",
            ]
            if let offset { entry["controlOffset"] = offset }
            if let reason { entry["reason"] = reason }
            if let rate { entry["rate"] = rate }
            return json(.ok, entry)
        } catch {
            return refused(error)
        }
    }

    private func unsetFlag(_ request: Request, key rawKey: String) async -> Response {
        if let denied = authorize(request) { return denied }
        let key: FlagKey
        switch parseKey(rawKey) {
        case .success(let parsed): key = parsed
        case .failure(let failure): return failure.response
        }
        do throws(OperatorActions.Refusal) {
            let offset = try await actions.setFlag(key, enabled: nil, rate: nil, reason: nil, who: caller(request))
            var entry: [String: Any] = ["key": key.description, "removed": true]
            if let offset { entry["controlOffset"] = offset }
            return json(.ok, entry)
        } catch {
            return refused(error)
        }
    }

    /// The HTTP answer to a refused change.
    private func refused(_ refusal: OperatorActions.Refusal) -> Response {
        switch refusal.kind {
        case .notFound: problem(.notFound, refusal.message)
        case .conflict: problem(.conflict, refusal.message)
        case .unavailable: problem(.serviceUnavailable, refusal.message)
        case .internalError: problem(.internalServerError, refusal.message)
        }
    }

    // MARK: Helpers

    private struct BadRequest: Error {
        let response: Response
    }

    /// The request's body as a JSON object, or a 413 (over `admin.maxBodyBytes`) or 400 naming the problem;
    /// `example` shows the shape wanted.
    private func decodeBody<Body: Decodable>(_ type: Body.Type, _ request: Request, like example: String) async
        -> Result<Body, BadRequest>
    {
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: settings.maxBodyBytes)
        } catch {
            return .failure(
                BadRequest(
                    response: problem(
                        .contentTooLarge, "the request body is larger than \(settings.maxBodyBytes) bytes")))
        }
        let data = Data(buffer: body)
        do {
            guard try JSONSerialization.jsonObject(with: data) is [String: Any] else {
                return .failure(
                    BadRequest(response: problem(.badRequest, "the body must be a JSON object like \(example)")))
            }
        } catch {
            return .failure(
                BadRequest(response: problem(.badRequest, "the body is not valid JSON: \(error.localizedDescription)")))
        }
        do {
            return .success(try CheckedJSON.decode(type, from: data))
        } catch {
            return .failure(BadRequest(response: problem(.badRequest, error.detail)))
        }
    }

    /// The shard a `/v1/shards/{topic}/{partition}/...` route names, or a 400 naming the problem.
    private func shard(_ context: AdminRequestContext) -> Result<TopicPartition, BadRequest> {
        let topic = context.parameters.get("topic") ?? ""
        let partitionText = context.parameters.get("partition") ?? ""
        guard let partition = Int32(partitionText), partition >= 0 else {
            return .failure(
                BadRequest(response: problem(.badRequest, "partition must be a number, got '\(partitionText)'")))
        }
        return .success(TopicPartition(topic, partition))
    }

    /// A flag key from its path form (`orders`, `orders/3`, `orders%2F3`, `*`), or a 400 naming the problem.
    private func parseKey(_ rawKey: String) -> Result<FlagKey, BadRequest> {
        do {
            return .success(try FlagKey(parsing: rawKey.removingPercentEncoding ?? rawKey))
        } catch {
            return .failure(BadRequest(response: problem(.badRequest, (error as? SluiceError)?.message ?? "\(error)")))
        }
    }

    private func authorize(_ request: Request) -> Response? {
        guard let token = settings.token, !token.isEmpty else { return nil }
        guard !Dashboard.constantTimeEqual(request.headers[.authorization] ?? "", "Bearer \(token)") else { return nil }
        logger.warning(
            "admin change refused: missing or wrong token",
            metadata: ["sluice.caller": "\(caller(request))", "http.path": "\(request.uri.path)"])
        var response = problem(.unauthorized, "this change needs Authorization: Bearer <token>")
        response.headers[.wwwAuthenticate] = "Bearer"
        return response
    }

    /// Why a read is refused: with a token, reads need it too unless `open` (admin.publicReads, publicMetrics).
    /// Without a token every request is open, which only a loopback listener is allowed.
    private func authorizeRead(_ request: Request, open: Bool) -> Response? {
        guard let token = settings.token, !token.isEmpty, !open else { return nil }
        guard !Dashboard.constantTimeEqual(request.headers[.authorization] ?? "", "Bearer \(token)") else { return nil }
        var response = problem(
            .unauthorized, "reading this needs Authorization: Bearer <token> (or admin.publicReads: on)")
        response.headers[.wwwAuthenticate] = "Bearer"
        return response
    }

    /// Whether `HOST:PORT` listens on this machine only.
    static func isLoopback(_ listen: String) -> Bool {
        guard let colon = listen.lastIndex(of: ":") else { return false }
        let host = listen[..<colon].trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    private func caller(_ request: Request) -> String {
        if let caller = request.headers.first(where: { $0.name.canonicalName == "x-sluice-caller" })?.value {
            return caller
        }
        return request.headers[.userAgent] ?? "unknown"
    }

    /// `{"shards": [...]}`, keys sorted.
    static func shardsResponse(_ shards: [ShardStatus]) -> Response {
        let now = ContinuousClock.now
        return shardsResponse(shards.map { ShardReport($0, now: now) })
    }

    /// `{"shards": [...]}`, keys sorted.
    static func shardsResponse(_ reports: [ShardReport]) -> Response {
        // Encoded with `JSONEncoder`: at 10,000 shards, dictionaries through `JSONSerialization` took 2 s a request.
        struct Document: Encodable { var shards: [ShardReport] }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(Document(shards: reports)) else {
            return problem(.internalServerError, "the shards could not be encoded")
        }
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// The port the server bound, shared with its `onServerRunning` callback.
final class BoundPort: Sendable {
    let value = Mutex<Int?>(nil)
}

/// A JSON response.
func json(_ status: HTTPResponse.Status, _ object: Any) -> Response {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

/// A JSON error naming the problem.
func problem(_ status: HTTPResponse.Status, _ message: String) -> Response {
    json(status, ["error": message])
}
