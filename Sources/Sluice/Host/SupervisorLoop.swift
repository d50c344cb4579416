import Logging
import Metrics
import SluiceKafka
import Tracing

/// The host's supervisor: one loop that owns every shard's state machine. Each input (a Kafka event, a
/// pipeline that ended, a timer, a flag change, a reset, a shutdown) is handled to completion before the
/// next, so shard state needs no locks; long work runs in child tasks of the host's task group, which
/// report back as inputs.
struct SupervisorLoop {
    /// What the loop tells its host (assignment, ticks, events) and reads from it (the shards' statuses).
    let host: any SupervisorHost
    let configuration: SluiceConfiguration
    let flags: FlagResolver
    /// The shards' views, stored offsets and counters, read outside the loop.
    let registry: ShardRegistry
    let watchdogClock: any HostClock
    let carefulGate: CarefulGate
    let crashContainment: CrashContainment?
    let metricsFactory: any MetricsFactory
    let tracer: (any Tracer)?
    /// The group's control plane (trips, commands), when on.
    let control: (any ShardControlState)?
    let handlers: [String: AnyHandler]
    let consumer: any ShardConsumer
    let producer: SharedProducer?
    let deadLetters: (any DeadLetterSink)?
    let output: (any OutputSink)?
    /// Transactions for topics with `output: exactlyOnce` (nil without a Kafka consumer: their sends fail).
    let exactlyOnce: ExactlyOnceOutput?
    let input: AsyncStream<SluiceHost.Input>.Continuation
    let logger: Logger
    /// Where pipelines run handler code (the host's handler threads).
    let handlerExecutor: (any TaskExecutor)?
    /// Where trips and their clearing are published for the group (with the control plane on).
    let tripUpdates: AsyncStream<(TopicPartition, ControlRecord.Trip?)>.Continuation?
    let clock: any HostClock
    var shards: [TopicPartition: ShardSupervisor] = [:]
    var revocations: [UInt64: (revocation: KafkaRevocation, partitions: [TopicPartition])] = [:]
    var nextIdentifier: UInt64 = 0
    /// Shards whose pause set an event may have changed, handed to the consumer together when it ends.
    var pendingPauses: Set<TopicPartition> = []
    /// Views and events of transitions whose pause sets are still to be handed to the consumer, in order.
    var pendingPublications:
        [(topicPartition: TopicPartition, events: [ShardSupervisor.StateMachine<ContinuousClock.Instant>.Event])] = []
    var awaitingPublication: Set<TopicPartition> = []
    var lastStateGauges = ContinuousClock.now - .seconds(1)
    var shuttingDown = false
    var closing = false
    private(set) var finished = false
    /// Assigned partitions whose shards wait for the control topic to be read to its end, by read.
    var awaitingDesiredState: [UInt64: [TopicPartition]] = [:]
    /// Partitions whose suspect records are being cleared.
    var clearingSuspects: Set<TopicPartition> = []
    /// The control topic's next command to carry out: commands written before this host started are history.
    var commandPosition: Int64
    let stateGauges: [String: Gauge]
    /// `sluice_commit_failures_total`, brought up to the consumer's count on every tick.
    let commitFailures: Counter
    var commitFailuresRecorded = 0

    static let stateNames = ["starting", "running", "draining", "off", "backingOff", "tripped", "stopped"]

    init(
        host: any SupervisorHost, environment: Environment, handlers: [String: AnyHandler], consumer: any ShardConsumer,
        producer: SharedProducer?,
        deadLetters: (any DeadLetterSink)?, output: (any OutputSink)? = nil,
        exactlyOnce: ExactlyOnceOutput? = nil, input: AsyncStream<SluiceHost.Input>.Continuation,
        handlerExecutor: (any TaskExecutor)?,
        tripUpdates: AsyncStream<(TopicPartition, ControlRecord.Trip?)>.Continuation? = nil,
        control: (any ShardControlState)?, logger: Logger
    ) {
        self.control = control
        self.handlerExecutor = handlerExecutor
        self.tripUpdates = tripUpdates
        self.commandPosition = control?.appliedPosition ?? 0
        self.host = host
        self.configuration = environment.configuration
        self.flags = environment.flags
        self.registry = environment.registry
        self.watchdogClock = environment.watchdogClock
        self.carefulGate = environment.carefulGate
        self.crashContainment = environment.crashContainment
        self.metricsFactory = environment.metricsFactory
        self.tracer = environment.tracer
        self.handlers = handlers
        self.consumer = consumer
        self.producer = producer
        self.deadLetters = deadLetters
        self.output = output
        self.exactlyOnce = exactlyOnce
        self.input = input
        self.logger = logger
        self.clock = environment.clock
        var gauges: [String: Gauge] = [:]
        let factory = environment.metricsFactory
        commitFailures = Counter(label: "sluice_commit_failures_total", factory: factory)
        for name in Self.stateNames {
            gauges[name] = Gauge(label: "sluice_shards", dimensions: [("state", name)], factory: factory)
        }
        self.stateGauges = gauges
    }

    mutating func handle(_ item: SluiceHost.Input, group: inout DiscardingTaskGroup) async {
        switch item {
        case .kafka(.assigned(let partitions)):
            host.noteAssignment(lost: false)
            await assigned(partitions, group: &group)
        case .desiredStateRead(let identifier):
            await assignRead(identifier, group: &group)
        case .kafka(.revoked(let revocation)):
            await revoke(revocation, group: &group)
        case .kafka(.lost(let partitions)):
            host.noteAssignment(lost: true)
            forgetAwaiting(partitions)
            for topicPartition in partitions { lose(topicPartition) }
        case .kafka(.error(let error)):
            // The consumer logged it (a fatal one at error level, which /healthz reports).
            logger.debug(
                "kafka error event", metadata: ["kafka.error": "\(error.message)", "kafka.fatal": "\(error.isFatal)"])
        case .consumerClosed:
            finished = true
            for shard in shards.values { shard.destroyMetrics() }
        case .pipelineEnded(let topicPartition, let pipelineID, let outcome):
            await pipelineEnded(topicPartition, pipelineID: pipelineID, outcome: outcome, group: &group)
        case .timer(let topicPartition, let token):
            guard shards[topicPartition]?.timerToken == token else { break }
            let now = clock.now
            await transition(topicPartition, group: &group) { $0.timerFired(now: now) }
        case .flagsChanged:
            await flagsChanged(group: &group)
        case .reset(let topicPartition, let reply):
            guard shards[topicPartition] != nil else {
                reply.resume(returning: false)
                break
            }
            logger.info("operator reset", metadata: metadata(topicPartition))
            let now = clock.now
            await transition(topicPartition, group: &group) { $0.reset(now: now) }
            reply.resume(returning: true)
        case .pipelinePause(let topicPartition, let pipelineID, let reason, let on):
            pipelinePause(topicPartition, pipelineID: pipelineID, reason, on)
        case .revocationDeadline(let identifier):
            forceRevocation(identifier)
        case .shutdownRequested:
            await beginShutdown(group: &group)
        case .tick:
            let failures = consumer.commitFailureCount
            if failures > commitFailuresRecorded {
                commitFailures.increment(by: failures - commitFailuresRecorded)
                commitFailuresRecorded = failures
            }
            let now = clock.now
            var abandonedByTopic: [String: Int] = Dictionary(
                uniqueKeysWithValues: configuration.topics.keys.map { ($0, 0) })
            var lagByTopic: [String: Int64] = Dictionary(
                uniqueKeysWithValues: configuration.topics.keys.map { ($0, 0) })
            for status in host.shards {
                guard let shard = shards[status.topicPartition] else { continue }
                shards[status.topicPartition]?.abandoned.removeAll { $0.callsInProgress == 0 }
                abandonedByTopic[status.topicPartition.topic, default: 0] += shard.abandonedCalls
                lagByTopic[status.topicPartition.topic, default: 0] += status.lag ?? 0
                if let lag = status.lag { shard.lagGauge?.record(lag) }
                if let lagSeconds = status.lagSeconds { shard.lagSecondsGauge?.record(lagSeconds) }
                checkStall(status, now: now)
            }
            await releaseQuarantineHolds(group: &group)
            await carryOutCommands(group: &group)
            for (topic, calls) in abandonedByTopic {
                Gauge(label: "sluice_handler_abandoned", dimensions: [("topic", topic)], factory: metricsFactory)
                    .record(calls)
            }
            // The topic's lag over this host's shards: kept when per-partition series are off.
            for (topic, lag) in lagByTopic {
                Gauge(label: "sluice_topic_lag", dimensions: [("topic", topic)], factory: metricsFactory).record(
                    lag)
            }
            host.noteTick()
        case .shutdownDeadline:
            if !closing {
                logger.warning("shards did not drain within shutdownTimeout; committing what completed")
                for shard in shards.values { shard.pipeline?.requestStop() }
                startClose(group: &group)
            }
        }
        await flushPauses()
        finishRevocations()
        if shuttingDown, !closing, shards.values.allSatisfy({ $0.machine.state == .stopped }) {
            startClose(group: &group)
        }
        recordStateGauges(force: { if case .tick = item { true } else { false } }())
    }
}
