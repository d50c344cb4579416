import Logging
import Metrics
import ServiceLifecycle
import SluiceKafka
import Synchronization
import Tracing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Runs a service's Kafka consumers: one Broadway-style pipeline per assigned partition (a *shard*), each
/// under a circuit breaker and behind a runtime flag, with at-least-once offsets, rebalancing that drains
/// revoked shards before releasing them, and a graceful shutdown that finishes in-flight work, commits and
/// leaves the group.
///
/// ```swift
/// let host = SluiceHost(configuration: try await .load(file: "sluice.yaml"), logger: logger)
/// host.register("orders", OrderHandler())
/// host.register("payments", batchHandler: PaymentsSink())
/// try await host.run()   // a Service: drains and commits on graceful shutdown
/// ```
///
/// ## Supervision
///
/// One loop owns every shard's state machine (``ShardState``). Pipelines, timers, the flag poller and the
/// Kafka event stream are child tasks that report into that loop, which decides and acts: pause and
/// resume reasons, commits, starting a pipeline from the committed offset after a crash, draining on a
/// flag change or a revocation. A crashed shard is contained: its partition is paused (`breaker`) while
/// every other shard keeps processing.
public final class SluiceHost: Service, Sendable {
    /// What the supervisor loop reacts to.
    enum Input: Sendable {
        case kafka(KafkaConsumerEvent)
        case consumerClosed
        case pipelineEnded(TopicPartition, pipeline: UInt64, ShardPipeline.Outcome)
        case timer(TopicPartition, token: UInt64)
        case flagsChanged
        case reset(TopicPartition, CheckedContinuation<Bool, Never>)
        /// The current pipeline of a shard wants its partition paused for a reason of its own, or no longer.
        case pipelinePause(TopicPartition, pipeline: UInt64, KafkaPauseReason, Bool)
        case revocationDeadline(UInt64)
        /// The control topic was read to its end for the assignment with this identifier.
        case desiredStateRead(UInt64)
        case shutdownRequested
        case shutdownDeadline
        /// Once a second: refresh gauges, prove the loop turns.
        case tick
    }

    struct State {
        var handlers: [String: AnyHandler] = [:]
        var started = false
        var shutdownRequested = false
        var inputs: AsyncStream<Input>.Continuation?
        var consumer: (any ShardConsumer)?
        var subscribers: [UInt64: AsyncStream<ShardEvent>.Continuation] = [:]
        var nextSubscriber: UInt64 = 0
        var joined = false
        /// The group session was lost (the assignment went with it) and no new assignment came yet.
        var assignmentLost = false
        var assignmentsLost = 0
        var running = false
        /// ``run()`` returned or threw: this host serves nothing any more, whatever its process does next.
        var ended = false
        var lastTick: ContinuousClock.Instant?
        /// Ticks the supervisor loop handled (tests wait for one after moving a manual clock).
        var ticks = 0
        /// Handler threads held by one handler call for `blockedThreadAfter` or longer.
        var blockedHandlerThreads = 0
        /// The crash journal and quarantines, once ``run()`` opened them.
        var crashContainment: CrashContainment?
        /// The worker processes, while a host with `host.workers` runs as their supervisor.
        var workerSupervisor: WorkerSupervisor?
    }

    /// The configuration the host runs with (a worker's: its own static member id and state directory).
    public let configuration: SluiceConfiguration
    /// Set when this process is a worker of a supervising host (docs/architecture.md §14): it consumes its
    /// partitions and leaves the admin API, the dashboard and `/metrics` to its supervisor.
    public let worker: WorkerEnvironment?
    /// The highest flag layer, for operators (the admin API writes here).
    public let operatorFlags = InMemoryFlagSource(name: "admin")
    /// The layered flags: operator flags, then the flag file, then the default.
    public let flags: FlagResolver
    let logger: Logger
    let state = Mutex(State())
    /// The shards' views, stored offsets and counters.
    let registry: ShardRegistry
    /// Where this host's metrics go.
    let metricsFactory: any MetricsFactory
    /// Spans per handler call and dead-letter write; nil while tracing is off.
    let tracer: (any Tracer)?
    /// The time of the host's timed logic (see ``HostClock``).
    let clock: any HostClock
    /// Real time, with a timer thread of this host's: the handler watchdog, the blocked-thread monitor, and
    /// the periodic work that talks to Kafka (status, watermarks, flag polls, control catch-up). The same clock
    /// as ``clock`` unless a test drives that one.
    let realTime: SystemHostClock
    /// The group's control plane, when `control.enabled`.
    public let control: ControlPlaneFlagSource?
    /// How this host names itself in the control topic (`host/IDENTITY`): host name and process id.
    public let identity =
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-\(UInt16.random(in: 0...UInt16.max))"

    /// Lets one suspect of an unattributed death into a handler call at a time, across this host's shards.
    let carefulGate: CarefulGate

    /// The crash journal and the quarantines it honours (docs/architecture.md §12), while the host runs.
    var crashContainment: CrashContainment? { state.withLock { $0.crashContainment } }

    /// The quarantined (or counted) messages this host knows of, by partition.
    public var quarantines: [TopicPartition: Quarantine] { crashContainment?.quarantines ?? [:] }

    /// Creates a host. Handlers are registered next; nothing connects before ``run()``.
    ///
    /// - Parameters:
    ///   - configuration: what to consume and how (usually from ``SluiceConfiguration/load(file:environment:)``).
    ///   - logger: where the host logs.
    ///   - flagSources: flag sources of your own (a flag service such as LaunchDarkly, Unleash or an
    ///     OpenFeature provider), highest precedence first. They rank below the group's control plane (an
    ///     operator's flip during an incident wins) and above the flag file; polled every `flags.pollInterval`,
    ///     or at once when a source pushes ``FlagSource/changes``.
    ///   - metricsFactory: where the host's metrics go; nil: the factory bootstrapped with `MetricsSystem`, as
    ///     it is now (read once, here).
    ///   - tracer: spans per handler call and dead-letter write; nil: the tracer bootstrapped with
    ///     `InstrumentationSystem`, as it is now (tracing is off while that is a no-op tracer).
    public convenience init(
        configuration: SluiceConfiguration, logger: Logger = Logger(label: "sluice"),
        flagSources: [any FlagSource] = [],
        metricsFactory: (any MetricsFactory)? = nil, tracer: (any Tracer)? = nil
    ) {
        self.init(
            configuration: configuration, logger: logger, clock: SystemHostClock(name: "sluice-host-timers"),
            flagSources: flagSources,
            metricsFactory: metricsFactory, tracer: tracer)
    }

    /// Creates a host whose timed logic (restart backoffs, healthy-after, cooldown probes, the once-a-second
    /// tick) runs on `clock`: tests drive a manual one (`SluiceTesting`'s `ManualHostClock`), so a breaker's
    /// backoff or trip is tested without waiting for it in real time.
    public init(
        configuration: SluiceConfiguration, logger: Logger, clock: any HostClock, flagSources: [any FlagSource] = [],
        metricsFactory: (any MetricsFactory)? = nil, tracer: (any Tracer)? = nil
    ) {
        self.clock = clock
        let metricsFactory = metricsFactory ?? MetricsSystem.factory
        self.metricsFactory = metricsFactory
        self.tracer = (tracer ?? MessageTracing.bootstrapped()).flatMap { $0 is NoOpTracer ? nil : $0 }
        let realTime = clock as? SystemHostClock ?? SystemHostClock(name: "sluice-host-timers")
        self.realTime = realTime
        carefulGate = CarefulGate(clock: realTime)
        let worker = WorkerEnvironment(ProcessInfo.processInfo.environment)
        self.worker = worker
        // With a topic entry for each retry topic (onFailure: retryLater), consumed like the topics.
        let configuration = (worker?.workerConfiguration(configuration) ?? configuration).withRetryTopics()
        self.configuration = configuration
        var logger = logger
        if let worker { logger[metadataKey: "sluice.worker"] = "\(worker.slot)" }
        self.logger = logger
        registry = ShardRegistry(logger: logger)
        var sources: [any FlagSource] = [operatorFlags]
        if configuration.control.enabled {
            // Read only once the host runs; a bad librdkafka property surfaces when run() loads it.
            // Keys that cannot be read leave no reader: run() then says what is wrong with them.
            if case .success(let keys) = Result(catching: { () throws(SluiceError) in try configuration.control.keys() }
            ),
                let control = try? ControlPlaneFlagSource(
                    bootstrapServers: configuration.kafka.bootstrap, topic: configuration.controlTopic,
                    properties: configuration.controlProperties, keys: keys, clock: realTime,
                    metricsFactory: metricsFactory, logger: logger)
            {
                sources.append(control)
                self.control = control
            } else {
                self.control = nil
            }
        } else {
            self.control = nil
        }
        sources += flagSources
        if let file = configuration.flags.file { sources.append(FileFlagSource(path: file)) }
        self.flags = FlagResolver(
            sources: sources, defaultEnabled: configuration.flags.defaultEnabled,
            pollInterval: configuration.flags.pollInterval, metricsFactory: metricsFactory,
            parentTopics: configuration.topics.compactMapValues { $0.retryStage?.topic }, logger: logger)
    }

    /// Registers the handler of a topic's messages, one message at a time.
    public func register(_ topic: String, _ handler: some MessageHandler) {
        state.withLock { $0.handlers[topic] = .message(handler) }
    }

    /// Registers the handler of a topic's messages, in batches (the topic needs `batch` settings).
    public func register(_ topic: String, batchHandler: some BatchHandler) {
        state.withLock { $0.handlers[topic] = .batch(batchHandler) }
    }

    /// A snapshot of every shard this host has now.
    public var shards: [ShardStatus] {
        registry.snapshot(
            consumer: state.withLock { $0.consumer }, quarantines: quarantines,
            nowMilliseconds: Int64((Date().timeIntervalSince1970 * 1000).rounded()))
    }

    /// Handler threads held by one handler call without suspending for `blockedThreadAfter` or longer
    /// (blocking I/O, `sleep`, a CPU loop). Each was replaced by another thread, up to `maxHandlerThreads`.
    public var blockedHandlerThreads: Int { state.withLock { $0.blockedHandlerThreads } }

    /// Shard crashes and restarts on this host since it started, every shard together.
    public var shardCrashesAndRestarts: (crashes: Int, restarts: Int) { registry.crashesAndRestarts }

    /// Whether the host is ready for traffic (joined its group, not shutting down), with the reasons when not.
    public var readiness: (ready: Bool, reasons: [String]) {
        if let workers = state.withLock({ $0.workerSupervisor }) { return workersReadiness(workers) }
        return state.withLock { state in
            var reasons: [String] = []
            if !state.running { reasons.append("the host is not running") }
            if state.running, !state.joined { reasons.append("the consumer has not joined its group yet") }
            if state.running, state.assignmentLost {
                reasons.append("the consumer lost its group session and its partitions; it is rejoining")
            }
            if state.shutdownRequested { reasons.append("the host is shutting down") }
            return (reasons.isEmpty, reasons)
        }
    }

    /// Whether the host's loops make progress: the supervisor loop ticked and the consumer's thread went
    /// round within `limit`.
    public func health(limit: Duration = .seconds(10)) -> (healthy: Bool, reasons: [String]) {
        if state.withLock({ $0.workerSupervisor }) != nil { return (true, []) }
        let (running, lastTick, consumer) = state.withLock { ($0.running, $0.lastTick, $0.consumer) }
        guard running else { return (false, ["the host is not running"]) }
        var reasons: [String] = []
        if let lastTick, ContinuousClock.now - lastTick > limit {
            reasons.append("the supervisor loop has not turned for \(ContinuousClock.now - lastTick)")
        }
        if let consumer, consumer.timeSinceLastActivity > limit {
            reasons.append("the Kafka consumer thread has not turned for \(consumer.timeSinceLastActivity)")
        }
        if let fatal = consumer?.fatalError {
            reasons.append("librdkafka raised a fatal error; the consumer must be restarted: \(fatal.message)")
        }
        return (reasons.isEmpty, reasons)
    }

    /// Shard events (started, stopped, crashed, backing off, tripped, reset, flag changed), from now on.
    /// Each call returns a new sequence; it ends when the host stops.
    public func events() -> AsyncStream<ShardEvent> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: ShardEvent.self, bufferingPolicy: .bufferingNewest(10_000))
        let identifier = state.withLock { state -> UInt64 in
            state.nextSubscriber += 1
            state.subscribers[state.nextSubscriber] = continuation
            return state.nextSubscriber
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: identifier) }
        }
        return stream
    }

    /// Starts a graceful shutdown: stop fetching, finish in-flight work (up to `shutdownTimeout`), commit,
    /// leave the group; ``run()`` then returns. Graceful shutdown of a service group does the same.
    public func shutdown() {
        let (inputs, workers) = state.withLock { state in
            state.shutdownRequested = true
            return (state.inputs, state.workerSupervisor)
        }
        inputs?.yield(.shutdownRequested)
        workers?.stop()
    }

    // MARK: Used by the supervisor loop

    /// The consumer got an assignment (joined), or lost the one it had.
    func noteAssignment(lost: Bool) {
        state.withLock { state in
            if !lost { state.joined = true }
            state.assignmentLost = lost
            if lost { state.assignmentsLost += 1 }
        }
    }

    /// How many times the host's assignment was lost rather than revoked.
    var assignmentsLost: Int { state.withLock { $0.assignmentsLost } }

    func noteTick() {
        state.withLock { state in
            state.lastTick = .now
            state.ticks += 1
        }
    }

    /// Ticks the supervisor loop has handled: it ticks once a second of the host's clock (stall detection,
    /// gauges, restarts that came due). A test that moves a manual clock waits for the tick it causes.
    public var ticks: Int { state.withLock { $0.ticks } }

    func publish(_ event: ShardEvent) {
        let subscribers = state.withLock { Array($0.subscribers.values) }
        for subscriber in subscribers { subscriber.yield(event) }
    }
}
