import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Sluice
import SluiceAdmin
import Synchronization

/// A realistic consumer service built on Sluice: orders handled in order per customer, payments written
/// to SQLite in batches, a one-line summary per second per topic, and a graceful shutdown on SIGTERM or
/// SIGINT (a second signal exits at once).
@main
struct OrderService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Consume orders and payments with Sluice.")

    @Option(name: .long, help: "The Sluice configuration file.")
    var config: String = "Examples/OrderService/sluice.yaml"

    @Option(name: .long, help: "The SQLite database the payments are written to.")
    var database: String = "order-service.sqlite"

    @Option(name: .long, help: "Simulate a slow payments store: wait this long before each batch write.")
    var paymentDelayMs: Int = 0

    func run() async throws {
        // First: a stop that comes while the service is still starting is a stop, not a death by SIGTERM.
        let signals = ShutdownSignals()
        FileHandle.standardError.write(Data("order-service: starting\n".utf8))
        var logger = Logger(label: "order-service")
        logger.logLevel = .info
        let configuration = try await SluiceConfiguration.load(file: config)
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let store = try PaymentStore(path: database)
        // A flag service of the team's own, polled over HTTP, below the control plane and above the flag file.
        let flagSources: [any FlagSource] =
            try ProcessInfo.processInfo.environment["ORDER_SERVICE_FLAGS_URL"].map { text in
                guard let url = URL(string: text), url.scheme == "http" || url.scheme == "https" else {
                    throw ValidationError("ORDER_SERVICE_FLAGS_URL: expected an http(s) URL, got '\(text)'")
                }
                return [HTTPFlagSource(url: url)]
            } ?? []
        let host = SluiceHost(configuration: configuration, logger: logger, flagSources: flagSources)
        let orders = OrderHandler()
        host.register("orders", orders)
        host.register("payments", batchHandler: PaymentsSink(store: store, delay: .milliseconds(paymentDelayMs)))

        let summary = SummaryPrinter(host: host, orders: orders, store: store)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: host),
            .init(service: summary, successTerminationBehavior: .ignore),
        ]
        if configuration.admin.enabled {
            services.append(.init(service: try AdminServer(host: host, registry: registry, logger: logger)))
        }
        // SIGTERM and SIGINT are ShutdownSignals', which starts the group's graceful shutdown.
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger))
        signals.attach(group)
        try await group.run()
        let (handled, violations) = orders.totals
        FileHandle.standardError.write(
            Data(
                "order-service stopped: \(handled) orders, per-customer order violations \(violations), \(store.count) payments stored\n"
                    .utf8))
    }
}

/// A customer order, as `sluice produce` writes it.
struct Order: Decodable {
    let key: String
    let seq: Int
    let n: Int
}

/// Handles orders one at a time per customer; checks that each customer's orders arrive in sequence.
///
/// To try crash containment, `ORDER_SERVICE_TRAP_ON_ORDER=N` makes the handler trap (`fatalError`, which
/// no Swift code can catch) on the order with index `n` N (or on each of a list `N1,N2,...`): the process dies, and on its next start Sluice
/// quarantines that order (Sluice's CrashContainment article). With `ORDER_SERVICE_TRAP_IN_CHILD_TASK=1` the trap happens in
/// a child task the handler starts, which Sluice cannot attribute: it finds the order by elimination.
final class OrderHandler: MessageHandler {
    private let state = Mutex<(handled: Int, violations: Int, last: [String: Int])>((0, 0, [:]))
    /// The poison orders: `ORDER_SERVICE_TRAP_ON_ORDER=N` or a comma-separated list `N1,N2,...`.
    private let poison = Set(
        (ProcessInfo.processInfo.environment["ORDER_SERVICE_TRAP_ON_ORDER"] ?? "").split(separator: ",").compactMap {
            Int($0.trimmingCharacters(in: .whitespaces))
        })
    private let trapInChildTask = ProcessInfo.processInfo.environment["ORDER_SERVICE_TRAP_IN_CHILD_TASK"] == "1"
    /// `ORDER_SERVICE_HANDLED_LOG=FILE`: each handled order's partition and offset, one line each, appended (by
    /// every process that handles orders): what a redelivery after a crash repeats is counted from it.
    private let handledLog: Int32? = ProcessInfo.processInfo.environment["ORDER_SERVICE_HANDLED_LOG"].map {
        open($0, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    }

    /// `ORDER_SERVICE_FAIL_YOUNGER_THAN=3s`: every tenth order (`n` a multiple of 10) fails while its record is
    /// younger than that, as with a downstream that sees new orders late: with `onFailure: { then: retryLater,
    /// delays: [5s] }` it waits in `orders.retry.5s` and succeeds from there (Sluice's Delayed retries article).
    private let failYoungerThan: Int64? = ProcessInfo.processInfo.environment["ORDER_SERVICE_FAIL_YOUNGER_THAN"]
        .flatMap { text in
            text.hasSuffix("ms")
                ? Int64(text.dropLast(2)) : text.hasSuffix("s") ? Int64(text.dropLast()).map { $0 * 1000 } : nil
        }

    /// `ORDER_SERVICE_OUTPUT=TOPIC`: each handled order is written to TOPIC (consume-transform-produce), keyed by
    /// customer, its headers naming the order's partition and offset (`input.partition`, `input.offset`).
    private let outputTopic = ProcessInfo.processInfo.environment["ORDER_SERVICE_OUTPUT"]

    func handle(_ message: Message, context: ShardContext) async throws {
        let order = try JSONDecoder().decode(Order.self, from: Data(message.value))
        if poison.contains(order.n) {
            let poisonAt =
                "order \(order.n) at \(context.topicPartition)@\(message.offset) is poison (ORDER_SERVICE_TRAP_ON_ORDER)"
            if trapInChildTask {
                async let trap: Void = { () async -> Void in fatalError(poisonAt) }()
                await trap
            }
            fatalError(poisonAt)
        }
        if let failYoungerThan, order.n % 10 == 0, let timestamp = message.timestampMilliseconds,
            Int64(Date().timeIntervalSince1970 * 1000) - timestamp < failYoungerThan
        {
            throw OrderNotReady(n: order.n)
        }
        // Where the order was first read: a retried one's headers say (`sluice.retry.origin.*`).
        let origin = { (key: String) in
            message.headers.last { $0.key == key }.map { String(decoding: $0.value ?? [], as: UTF8.self) }
        }
        let retried = origin("sluice.retry.attempt") != nil
        state.withLock { state in
            state.handled += 1
            // A redelivery after a restart repeats a sequence number; going backwards otherwise is a violation
            // (but for a retried order, which gave up its place: the later orders of its customer went on).
            if !retried, let last = state.last[order.key], order.seq < last { state.violations += 1 }
            state.last[order.key] = max(order.seq, state.last[order.key] ?? 0)
        }
        if let outputTopic {
            try await context.send(
                topic: outputTopic, key: Array(order.key.utf8), value: Array("{\"accepted\":\(order.n)}".utf8),
                headers: [
                    KafkaHeader(key: "input.partition", value: Array("\(context.topicPartition.partition)".utf8)),
                    KafkaHeader(key: "input.offset", value: Array("\(message.offset)".utf8)),
                ])
        }
        if let handledLog, handledLog >= 0 {
            // One write per line: O_APPEND keeps lines whole across threads and processes.
            let partition = origin("sluice.retry.origin.partition") ?? "\(context.topicPartition.partition)"
            let offset = origin("sluice.retry.origin.offset") ?? "\(message.offset)"
            let line = Array("\(partition) \(offset)\n".utf8)
            _ = line.withUnsafeBytes { write(handledLog, $0.baseAddress, $0.count) }
        }
    }

    var totals: (Int, Int) { state.withLock { ($0.handled, $0.violations) } }
}

/// `ORDER_SERVICE_FAIL_YOUNGER_THAN`: the order came too soon for the downstream.
struct OrderNotReady: Error, CustomStringConvertible {
    let n: Int
    var description: String { "order \(n) is not ready downstream yet" }
}

/// Writes payments to SQLite, one transaction per batch.
struct PaymentsSink: BatchHandler {
    let store: PaymentStore
    var delay: Duration = .zero

    func handle(_ batch: [Message], context: ShardContext) async throws {
        if delay > .zero {
            context.logger.info(
                "slow payments store: batch write started", metadata: ["sluice.batchSize": "\(batch.count)"])
            try await Task.sleep(for: delay)
        }
        try await store.insert(batch)
    }
}

/// Prints, each second, per topic: messages handled per second, in flight, and the committed lag.
struct SummaryPrinter: Service {
    let host: SluiceHost
    let orders: OrderHandler
    let store: PaymentStore

    func run() async throws {
        var previous: [String: Int] = [:]
        // Until a graceful shutdown, or the group cancels it (another service failed): a cancelled sleep
        // returns at once, and a loop that went on would spin and keep the process from exiting.
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            // A supervising host (host.workers) owns no shards: it says how its workers are; each worker prints
            // its own shards, its slot first.
            let workers = host.workerSlots
            if !workers.isEmpty {
                print(
                    "workers: "
                        + workers.map { "w\($0.slot) \($0.state) (restarts \($0.restarts))" }.joined(separator: ", "))
                continue
            }
            let shards = host.shards
            var line: [String] = host.worker.map { ["w\($0.slot)"] } ?? []
            for topic in Set(shards.map(\.topicPartition.topic)).sorted() {
                let own = shards.filter { $0.topicPartition.topic == topic }
                let processed = own.reduce(0) { $0 + $1.processed }
                let inFlight = own.reduce(0) { $0 + $1.inFlight }
                let lag = own.reduce(Int64(0)) { $0 + ($1.lag ?? 0) }
                var states: [String: Int] = [:]
                for shard in own { states[shard.state.name, default: 0] += 1 }
                let shardStates = states.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(
                    separator: ", ")
                line.append(
                    "\(topic): \(processed - previous[topic, default: 0]) msg/s, in-flight \(inFlight), lag \(lag) [\(shardStates)]"
                )
                previous[topic] = processed
            }
            if line.count > (host.worker == nil ? 0 : 1) { print(line.joined(separator: " | ")) }
        }
    }
}

/// SIGTERM and SIGINT from the first line of `run()`. Before the service group is there, the first ends the process
/// at once with status 0: nothing was started, and a stop during a slow start (loading, opening the store,
/// creating the host) is a stop, not a death by the signal's default action (a test that stopped a service right
/// after its restart saw exit status 15). Then the first starts the group's graceful shutdown, and a second exits at
/// once with status 1.
final class ShutdownSignals: Sendable {
    private let state = Mutex<(signals: Int, group: ServiceGroup?)>((0, nil))

    init() {
        for number in [SIGTERM, SIGINT] {
            // Ignored, so that only the source sees it (libdispatch's signal sources need the default action off).
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in
                // Signals that arrive before the handler runs are coalesced into one event: `data` counts them.
                let (signals, group) = state.withLock {
                    $0.signals += max(1, Int(source.data))
                    return ($0.signals, $0.group)
                }
                guard let group else {
                    FileHandle.standardError.write(Data("order-service: stopped before it started\n".utf8))
                    exit(0)
                }
                if signals >= 2 {
                    FileHandle.standardError.write(Data("order-service: second signal, exiting now\n".utf8))
                    exit(1)
                }
                Task { await group.triggerGracefulShutdown() }
            }
            source.resume()
        }
    }

    /// From now on a signal stops `group` gracefully (also before its `run()` begins: the group remembers it).
    func attach(_ group: ServiceGroup) { state.withLock { $0.group = group } }
}
