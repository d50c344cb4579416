import Logging
import Metrics
import SluiceKafka

/// The host's supervisor: one loop that owns every shard's state machine. Each input (a Kafka event, a
/// pipeline that ended, a timer, a flag change, a reset, a shutdown) is handled to completion before the
/// next, so shard state needs no locks; long work runs in child tasks of the host's task group, which
/// report back as inputs.
struct SupervisorLoop {
    let host: SluiceHost
    let handlers: [String: AnyHandler]
    let consumer: any ShardConsumer
    let producer: KafkaProducer?
    let deadLetters: (any DeadLetterSink)?
    let input: AsyncStream<SluiceHost.Input>.Continuation
    let logger: Logger
    /// Where pipelines run handler code (the host's handler threads).
    let handlerExecutor: (any TaskExecutor)?
    /// Where trips and their clearing are published for the group (with the control plane on).
    let tripUpdates: AsyncStream<(TopicPartition, ControlRecord.Trip?)>.Continuation?
    private let clock: any HostClock
    private var shards: [TopicPartition: ShardSupervisor] = [:]
    private var revocations: [UInt64: (revocation: KafkaRevocation, partitions: [TopicPartition])] = [:]
    private var nextIdentifier: UInt64 = 0
    /// Shards whose pause set an event may have changed, handed to the consumer together when it ends.
    private var pendingPauses: Set<TopicPartition> = []
    /// Views and events of transitions whose pause sets are still to be handed to the consumer, in order.
    private var pendingPublications: [(topicPartition: TopicPartition, events: [ShardSupervisor.StateMachine<ContinuousClock.Instant>.Event])] = []
    private var awaitingPublication: Set<TopicPartition> = []
    private var lastStateGauges = ContinuousClock.now - .seconds(1)
    private var shuttingDown = false
    private var closing = false
    private(set) var finished = false
    /// Partitions whose suspect records are being cleared.
    private var clearingSuspects: Set<TopicPartition> = []
    /// The control topic's next command to carry out: commands written before this host started are history.
    private var commandPosition: Int64
    private let stateGauges: [String: Gauge]
    /// `sluice_commit_failures_total`, brought up to the consumer's count on every tick.
    private let commitFailures = Counter(label: "sluice_commit_failures_total")
    private var commitFailuresRecorded = 0

    private static let stateNames = ["starting", "running", "draining", "off", "backingOff", "tripped", "stopped"]

    init(
        host: SluiceHost, handlers: [String: AnyHandler], consumer: any ShardConsumer, producer: KafkaProducer?,
        deadLetters: (any DeadLetterSink)?, input: AsyncStream<SluiceHost.Input>.Continuation,
        handlerExecutor: (any TaskExecutor)?, tripUpdates: AsyncStream<(TopicPartition, ControlRecord.Trip?)>.Continuation? = nil,
        logger: Logger
    ) {
        self.handlerExecutor = handlerExecutor
        self.tripUpdates = tripUpdates
        self.commandPosition = host.control?.appliedPosition ?? 0
        self.host = host
        self.handlers = handlers
        self.consumer = consumer
        self.producer = producer
        self.deadLetters = deadLetters
        self.input = input
        self.logger = logger
        self.clock = host.clock
        var gauges: [String: Gauge] = [:]
        for name in Self.stateNames { gauges[name] = Gauge(label: "sluice_shards", dimensions: [("state", name)]) }
        self.stateGauges = gauges
    }

    mutating func handle(_ item: SluiceHost.Input, group: inout DiscardingTaskGroup) async {
        switch item {
        case .kafka(.assigned(let partitions)):
            host.noteAssignment(lost: false)
            // Desired state before acting: the control topic read to its end as of now, so a partition's trip or
            // quarantine written by its last owner moments ago is known before its shard starts here.
            if let control = host.control, !(await control.catchUp(timeout: .seconds(5))) {
                logger.warning(
                    "the control topic could not be read to its end before starting the assigned shards; starting them with what was read",
                    metadata: ["kafka.partitions": "\(partitions)", "sluice.controlPosition": "\(control.appliedPosition)"])
            }
            for topicPartition in partitions { await assign(topicPartition, group: &group) }
            readGroupProgress(of: partitions.compactMap { shards[$0] }, group: &group)
        case .kafka(.revoked(let revocation)):
            await revoke(revocation, group: &group)
        case .kafka(.lost(let partitions)):
            host.noteAssignment(lost: true)
            for topicPartition in partitions { lose(topicPartition) }
        case .kafka(.error(let error)):
            // The consumer logged it (a fatal one at error level, which /healthz reports).
            logger.debug("kafka error event", metadata: ["kafka.error": "\(error.message)", "kafka.fatal": "\(error.isFatal)"])
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
        case .backpressure(let topicPartition, let pipelineID, let on):
            await backpressure(topicPartition, pipelineID: pipelineID, on)
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
            var abandonedByTopic: [String: Int] = Dictionary(uniqueKeysWithValues: host.configuration.topics.keys.map { ($0, 0) })
            var lagByTopic: [String: Int64] = Dictionary(uniqueKeysWithValues: host.configuration.topics.keys.map { ($0, 0) })
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
                Gauge(label: "sluice_handler_abandoned", dimensions: [("topic", topic)]).record(calls)
            }
            // The topic's lag over this host's shards: kept when per-partition series are off.
            for (topic, lag) in lagByTopic { Gauge(label: "sluice_topic_lag", dimensions: [("topic", topic)]).record(lag) }
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

    // MARK: Assignment and revocation

    private mutating func assign(_ topicPartition: TopicPartition, group: inout DiscardingTaskGroup) async {
        // During shutdown the consumer's close revokes what it is given.
        guard !shuttingDown, handlers[topicPartition.topic] != nil,
            let messages = consumer.shardMessages(for: topicPartition)
        else { return }
        let flag = host.flags.setting(for: topicPartition)
        let policy = (host.configuration.topics[topicPartition.topic] ?? TopicConfiguration()).breaker
        shards[topicPartition] = ShardSupervisor(
            topicPartition: topicPartition, policy: policy, flag: flag, messages: messages, now: clock.now,
            stallAfter: host.configuration.stallAfter, unstartedAfter: Self.unstartedAfter,
            perPartitionMetrics: host.configuration.perPartitionMetrics)
        // Tripped on whichever host had it before: it stays tripped here (a crash loop does not restart on a
        // new owner); a reset or a flag cycle clears it for the group.
        if let trip = host.control?.trip(for: topicPartition) {
            let now = clock.now
            shards[topicPartition]?.lastError = trip.reason
            logger.warning(
                "shard assigned tripped: the group's control plane holds it",
                metadata: metadata(topicPartition, ["sluice.reason": "\(trip.reason)", "kafka.offset": "\(trip.offset.map(String.init) ?? "-")"]))
            await transition(topicPartition, group: &group) { $0.assignedTripped(now: now, reason: trip.reason) }
            // Held at a quarantined message on its last owner: released here when the quarantine is.
            if let quarantine = host.crashContainment?.quarantine(for: topicPartition), quarantine.state == .quarantined {
                shards[topicPartition]?.heldByQuarantine = quarantine.offset
            }
            return
        }
        await transition(topicPartition, group: &group) { $0.assigned() }
    }

    /// What the last owners finished above their commits (commit metadata), read in one round trip beside
    /// the loop; each shard's first pipeline waits for it briefly.
    private func readGroupProgress(of assigned: [ShardSupervisor], group: inout DiscardingTaskGroup) {
        guard !assigned.isEmpty else { return }
        let progress = Dictionary(uniqueKeysWithValues: assigned.map { ($0.topicPartition, $0.groupProgress) })
        // Commit metadata is input from outside the process: what it names is bounded by what a host can have
        // done, a hundred times the topic's in-flight limit above the commit, and below the high watermark.
        let maximumDone = Dictionary(
            uniqueKeysWithValues: progress.keys.map { ($0, Int64(100 * max(1, (host.configuration.topics[$0.topic] ?? TopicConfiguration()).maxInFlight))) })
        group.addTask { [consumer, logger] in
            var committed: [TopicPartition: TopicPartitionOffset] = [:]
            var highWatermarks: [TopicPartition: Int64] = [:]
            do {
                committed = try await consumer.committedProgress(for: Array(progress.keys), timeout: .seconds(5))
                let withMetadata = committed.filter { $0.value.metadata?.hasPrefix(CommitMetadata.prefix) == true }.map(\.key)
                if !withMetadata.isEmpty {
                    highWatermarks = (try? await consumer.queryHighWatermarks(for: withMetadata, timeout: .seconds(5))) ?? [:]
                }
            } catch {
                logger.warning(
                    "could not read what the group finished above its commits; those messages are handled again",
                    metadata: ["error": "\(error)"])
            }
            for (topicPartition, holder) in progress {
                var done: Set<Int64> = []
                if let entry = committed[topicPartition] {
                    do {
                        let decoded = try CommitMetadata.decode(
                            entry.metadata, committed: entry.offset, highWatermark: highWatermarks[topicPartition],
                            maximumDone: maximumDone[topicPartition] ?? 100_000)
                        done = decoded.done
                        if decoded.pastHighWatermark > 0 {
                            logger.warning(
                                "commit metadata names offsets at or past the high watermark; they are left out",
                                metadata: [
                                    "kafka.partition": "\(topicPartition)", "sluice.pastHighWatermark": "\(decoded.pastHighWatermark)",
                                    "kafka.highWatermark": "\(highWatermarks[topicPartition].map(String.init) ?? "-")",
                                ])
                        }
                    } catch {
                        logger.warning(
                            "commit metadata refused; the partition is handled from its committed offset (messages it names are handled again)",
                            metadata: ["kafka.partition": "\(topicPartition)", "error": "\(error)"])
                    }
                }
                holder.resolve(done)
            }
        }
    }

    private mutating func revoke(_ revocation: KafkaRevocation, group: inout DiscardingTaskGroup) async {
        nextIdentifier += 1
        let identifier = nextIdentifier
        revocations[identifier] = (revocation, revocation.partitions)
        for topicPartition in revocation.partitions where shards[topicPartition] != nil {
            await transition(topicPartition, group: &group) { $0.stop() }
        }
        let deadline = clock.now + host.configuration.revokeTimeout
        group.addTask { [input, clock] in
            try? await clock.sleep(until: deadline)
            if !Task.isCancelled { input.yield(.revocationDeadline(identifier)) }
        }
    }

    /// Releases revocations whose shards have all stopped: their offsets are stored, the consumer commits
    /// and releases the partitions.
    private mutating func finishRevocations() {
        for (identifier, entry) in revocations {
            let drained = entry.partitions.allSatisfy { shards[$0].map { $0.machine.state == .stopped } ?? true }
            if drained { release(identifier) }
        }
    }

    private mutating func forceRevocation(_ identifier: UInt64) {
        guard let entry = revocations[identifier] else { return }
        logger.warning("revoked shards did not drain in time; releasing them", metadata: ["kafka.partitions": "\(entry.partitions)"])
        for topicPartition in entry.partitions { shards[topicPartition]?.pipeline?.requestStop() }
        release(identifier)
    }

    private mutating func release(_ identifier: UInt64) {
        guard let entry = revocations.removeValue(forKey: identifier) else { return }
        for topicPartition in entry.partitions {
            guard let shard = shards.removeValue(forKey: topicPartition) else { continue }
            shard.destroyMetrics()
            host.removeView(topicPartition)
        }
        entry.revocation.done()
    }

    private mutating func lose(_ topicPartition: TopicPartition) {
        guard let shard = shards.removeValue(forKey: topicPartition) else { return }
        // Another member may own it already: nothing of it is stored or committed from here on.
        shard.destroyMetrics()
        host.removeView(topicPartition)
        shard.pipeline?.requestStop()
        publish(topicPartition, ShardEvent.Kind.stopped(.released))
    }

    // MARK: Pipelines

    private mutating func pipelineEnded(
        _ topicPartition: TopicPartition, pipelineID: UInt64, outcome: ShardPipeline.Outcome, group: inout DiscardingTaskGroup
    ) async {
        guard var shard = shards[topicPartition], let pipeline = shard.pipeline, pipeline.generation == pipelineID else { return }
        shard.restartOffset = pipeline.restartOffset ?? shard.restartOffset
        // What finished above the restart point is not handled again by the next pipeline.
        let restartFrom = shard.restartOffset ?? 0
        shard.doneAboveRestart = shard.doneAboveRestart.union(pipeline.doneAboveWatermark).filter { $0 >= restartFrom }
        shard.pipeline = nil
        shard.backpressured = false
        shard.abandoned = (shard.abandoned + [pipeline]).filter { $0.callsInProgress > 0 }
        let abandonedCalls = shard.abandonedCalls
        let limit = (host.configuration.topics[topicPartition.topic] ?? TopicConfiguration()).maxAbandonedCalls
        var crashReason: String?
        var quarantined = false
        if case .crashed(let crash) = outcome {
            crashReason = crash.description
            if case .quarantined = crash.reason {
                // Held at the message until an operator skips it or resets the shard, whatever the breaker says.
                quarantined = true
                shard.heldByQuarantine = crash.offset
            }
            if abandonedCalls > limit {
                crashReason! += "; \(abandonedCalls) abandoned handler calls still running (maxAbandonedCalls \(limit)): tripped"
            }
            shard.lastError = crashReason
        }
        if abandonedCalls > 0 {
            logger.warning(
                "handler calls abandoned: Swift cannot stop them; the shard hands out no message they may still complete",
                metadata: metadata(topicPartition, ["sluice.abandonedCalls": "\(abandonedCalls)", "sluice.maxAbandonedCalls": "\(limit)"]))
        }
        shards[topicPartition] = shard
        host.updateView(shard)
        switch outcome {
        case .crashed:
            shard.crashes.increment()
            host.countShardCrash()
            let now = clock.now
            let reason = crashReason ?? ""
            await transition(topicPartition, group: &group) {
                $0.crashed(now: now, reason: reason, jitter: Double.random(in: 0...1), trip: quarantined || abandonedCalls > limit)
            }
        case .stopped, .sourceEnded:
            await transition(topicPartition, group: &group) { $0.drained() }
        }
    }

    private func startPipeline(_ shard: ShardSupervisor, group: inout DiscardingTaskGroup) -> ShardPipeline {
        let topicPartition = shard.topicPartition
        let inFlightBytes: (@Sendable () -> Int?)? = (shard.messages as? KafkaPartitionMessages).map { messages in
            { @Sendable in messages.bufferByteShare.map { $0 / SluiceConfiguration.bufferToInFlightRatio } }
        }
        let pipeline = ShardPipeline(
            topicPartition: topicPartition, generation: host.nextPipelineID(),
            configuration: host.configuration.topics[topicPartition.topic] ?? TopicConfiguration(),
            handler: handlers[topicPartition.topic]!, deadLetters: deadLetters,
            flowControl: SupervisorFlowControl(input: input, topicPartition: topicPartition),
            drainTimeout: host.configuration.drainTimeout, clock: clock, watchdogClock: host.realTime, alreadyDone: shard.doneAboveRestart,
            metrics: shard.pipelineMetrics, laneExecutor: handlerExecutor,
            predecessors: shard.abandoned.filter { $0.callsInProgress > 0 }, groupProgress: shard.groupProgress,
            journal: host.crashContainment?.journal, quarantine: host.crashContainment?.quarantine(for: topicPartition),
            carefulGate: host.carefulGate,
            consumerGroup: host.configuration.kafka.group,
            inFlightBytes: inFlightBytes, logger: logger)
        if let rate = shard.flag.rate { pipeline.setRate(rate) }
        let messages = shard.messages
        host.pipelineStarted(pipeline)
        group.addTask { [host, consumer, input] in
            // The host stores the watermark as it advances (one task for every pipeline), and the last one here.
            let outcome = await pipeline.run(source: messages)
            host.pipelineEnded(pipeline, consumer: consumer)
            input.yield(.pipelineEnded(topicPartition, pipeline: pipeline.generation, outcome))
        }
        return pipeline
    }

    // MARK: Stalls

    /// How long a running, unpaused shard with messages waiting may have fetched nothing since its assignment
    /// before the consumer is asked to restart its fetcher.
    static let unstartedAfter = Duration.seconds(10)

    /// Feeds the shard's stall detector this tick's observation and carries out what it says.
    private mutating func checkStall(_ status: ShardStatus, now: ContinuousClock.Instant) {
        let topicPartition = status.topicPartition
        guard var shard = shards[topicPartition] else { return }
        let observation = StallDetector<ContinuousClock.Instant>.Observation(
            progress: shard.pipeline.map { .init(pipeline: $0.generation, done: $0.progress) },
            expectedToProgress: shard.machine.state.isRunning && shard.desiredPauseReasons.isEmpty && (status.lag ?? 0) > 0,
            fetched: status.position != nil)
        switch shard.stall.observe(observation, now: now) {
        case .none:
            break
        case .cleared:
            shard.stalledGauge?.record(0)
            logger.info("shard no longer stalled", metadata: metadata(topicPartition))
            publish(topicPartition, ShardEvent.Kind.stallCleared)
        case .restartFetcher:
            logger.warning(
                "shard has messages waiting and its partition fetched nothing since it was assigned; asking the consumer to restart its fetcher",
                metadata: metadata(topicPartition, ["sluice.lag": "\(status.lag ?? 0)"]))
            consumer.restartFetcherIfUnstarted(topicPartition)
        case .stalled(let since):
            shard.stalledGauge?.record(1)
            logger.warning(
                "shard stalled: running and unpaused with messages waiting, but no progress",
                metadata: metadata(topicPartition, [
                    "sluice.lag": "\(status.lag ?? 0)", "sluice.stalledFor": "\(now - since)",
                    "sluice.pipeline": "\(shard.pipeline?.stallReport ?? "none")",
                ]))
            publish(topicPartition, ShardEvent.Kind.stalled(since: since))
            consumer.reportStall(topicPartition)
        }
        shards[topicPartition] = shard
        host.updateView(shard)
    }

    // MARK: Commands

    /// Operator commands from the control topic for shards this host owns, in order, once each.
    private mutating func carryOutCommands(group: inout DiscardingTaskGroup) async {
        guard let control = host.control else { return }
        for (offset, command) in control.commands(from: commandPosition) {
            commandPosition = offset + 1
            guard shards[command.topicPartition] != nil else { continue }
            switch command.action {
            case .reset:
                logger.info(
                    "operator reset through the control plane",
                    metadata: metadata(command.topicPartition, ["sluice.who": "\(command.who ?? "-")", "sluice.controlOffset": "\(offset)"]))
                let now = clock.now
                await transition(command.topicPartition, group: &group) { $0.reset(now: now) }
            }
        }
    }

    // MARK: Quarantine

    /// Shards held at a quarantined message start again once it is released or skipped (the control plane
    /// or the state directory says so), looked at every tick.
    private mutating func releaseQuarantineHolds(group: inout DiscardingTaskGroup) async {
        guard let containment = host.crashContainment else { return }
        let quarantines = containment.quarantines
        // Suspects handled past without a death are cleared.
        clearingSuspects = clearingSuspects.filter { quarantines[$0]?.state == .suspect }
        for (topicPartition, suspect) in quarantines.sorted(by: { $0.key < $1.key }) where suspect.state == .suspect {
            guard let shard = shards[topicPartition] else { continue }
            guard !clearingSuspects.contains(topicPartition), let watermark = shard.pipeline?.watermark, watermark >= suspect.range.upperBound
            else { continue }
            clearingSuspects.insert(topicPartition)
            group.addTask { [host, logger] in await containment.clearSuspect(topicPartition, configuration: host.configuration, logger: logger) }
        }
        for (topicPartition, shard) in shards.filter({ $0.value.heldByQuarantine != nil }).sorted(by: { $0.key < $1.key }) {
            guard let offset = shard.heldByQuarantine else { continue }
            guard shard.machine.state.isTripped else {
                shards[topicPartition]?.heldByQuarantine = nil
                continue
            }
            let quarantine = quarantines[topicPartition]
            guard quarantine == nil || quarantine!.state != .quarantined || quarantine!.offset != offset else { continue }
            shards[topicPartition]?.heldByQuarantine = nil
            logger.info(
                "quarantine \(quarantine.map { $0.state == .skip ? "skipped" : $0.state == .deadLetter ? "released to the dead-letter topic" : "released" } ?? "released"); the shard starts again",
                metadata: metadata(topicPartition, ["kafka.offset": "\(offset)", "sluice.who": "\(quarantine?.who ?? "-")"]))
            let now = clock.now
            await transition(topicPartition, group: &group) { $0.reset(now: now) }
        }
    }

    // MARK: Flags

    private mutating func flagsChanged(group: inout DiscardingTaskGroup) async {
        for topicPartition in shards.keys.sorted() {
            guard var shard = shards[topicPartition] else { continue }
            let setting = host.flags.setting(for: topicPartition)
            guard setting != shard.flag else { continue }
            let changed = setting.enabled != shard.flag.enabled
            if setting.rate != shard.flag.rate {
                shard.pipeline?.setRate(setting.rate)
                logger.info(
                    "shard rate changed",
                    metadata: metadata(topicPartition, ["sluice.rate": "\(setting.rate.map(ControlRecord.describeRate) ?? "unlimited")"]))
            }
            shard.flag = setting
            shards[topicPartition] = shard
            host.updateView(shard)
            shard.flagGauge?.record(setting.enabled ? 1 : 0)
            guard changed else { continue }
            logger.info(
                "flag changed",
                metadata: metadata(topicPartition, [
                    "sluice.flag": "\(setting.enabled ? "on" : "off")", "sluice.flagSource": "\(setting.source)",
                    "sluice.flagReason": "\(setting.reason ?? "")",
                ]))
            publish(topicPartition, .flagChanged(enabled: setting.enabled, source: setting.source, reason: setting.reason))
            await transition(topicPartition, group: &group) { $0.flagChanged(on: setting.enabled) }
        }
    }

    // MARK: Shutdown

    private mutating func beginShutdown(group: inout DiscardingTaskGroup) async {
        guard !shuttingDown else { return }
        shuttingDown = true
        logger.info("host shutting down: draining shards")
        for topicPartition in shards.keys.sorted() {
            await transition(topicPartition, group: &group) { $0.stop() }
        }
        let deadline = clock.now + host.configuration.shutdownTimeout
        group.addTask { [input, clock] in
            try? await clock.sleep(until: deadline)
            if !Task.isCancelled { input.yield(.shutdownDeadline) }
        }
    }

    private mutating func startClose(group: inout DiscardingTaskGroup) {
        closing = true
        group.addTask { [consumer, producer, logger] in
            do {
                try await consumer.commitStored()
            } catch {
                logger.warning("final commit failed", metadata: ["kafka.error": "\(error)"])
            }
            await consumer.close()
            await producer?.close()
        }
    }

    // MARK: Acting on the state machine

    /// Runs one event through a shard's state machine and carries out the actions it returns.
    private mutating func transition(
        _ topicPartition: TopicPartition,
        group: inout DiscardingTaskGroup,
        _ event: (inout ShardSupervisor.StateMachine<ContinuousClock.Instant>) -> ShardSupervisor.StateMachine<ContinuousClock.Instant>.Actions
    ) async {
        guard shards[topicPartition] != nil else { return }
        let wasTripped = shards[topicPartition]!.machine.state.isTripped
        defer { publishTripChange(topicPartition, wasTripped: wasTripped) }
        var pending = [event(&shards[topicPartition]!.machine)]
        while let actions = pending.popLast() {
            guard var shard = shards[topicPartition] else { return }
            if actions.commit {
                if let pipeline = shard.pipeline { host.storeWatermark(pipeline, consumer: consumer) }
                group.addTask { [consumer] in try? await consumer.commitStored() }
            }
            if actions.stopPipeline { shard.pipeline?.requestStop() }
            if let start = actions.startPipeline {
                var seekFailure: (any Error)?
                if start.seekToCommitted, shard.hasRun {
                    // From the first message the last pipelines took and did not finish. When no pipeline of
                    // this assignment took anything, the partition's buffer is intact and reading simply goes
                    // on: no seek, and no lookup of the committed offset (a network round trip the loop must
                    // never wait for).
                    if let offset = shard.restartOffset {
                        // Resumed first: the seek wakes librdkafka's broker thread, which fetches at once only if
                        // the partition is no longer paused by then. A resume alone does not wake it, and with
                        // every partition it fetches for paused it sleeps up to a second (2.0.2 and 2.16 alike).
                        let desired = shard.desiredPauseReasons
                        if desired != shard.appliedPauseReasons {
                            await consumer.setPauseReasons([topicPartition: desired])
                            shard.appliedPauseReasons = desired
                        }
                        do {
                            try await consumer.seek(topicPartition, to: offset)
                        } catch {
                            seekFailure = error
                        }
                    }
                    shard.restarts.increment()
                    host.countShardRestart()
                }
                if let seekFailure {
                    // Starting anyway would read from wherever librdkafka is, and the new watermark could
                    // commit past work the last pipeline dropped: the start fails, and the breaker counts it.
                    let reason = "seek before restart failed: \(seekFailure)"
                    logger.error("seek before restart failed", metadata: metadata(topicPartition, ["kafka.error": "\(seekFailure)"]))
                    shard.lastError = reason
                    shard.crashes.increment()
                    host.countShardCrash()
                    pending.append(shard.machine.crashed(now: clock.now, reason: reason, jitter: Double.random(in: 0...1)))
                } else {
                    shard.pipeline = startPipeline(shard, group: &group)
                    shard.backpressured = false
                    shard.hasRun = true
                    pending.append(shard.machine.started(now: clock.now))
                }
            }
            if let wakeAt = actions.wakeAt {
                shard.timerToken += 1
                let token = shard.timerToken
                group.addTask { [input, clock] in
                    try? await clock.sleep(until: wakeAt)
                    if !Task.isCancelled { input.yield(.timer(topicPartition, token: token)) }
                }
            }
            shard.attemptGauge?.record(shard.machine.attempt)
            shards[topicPartition] = shard
            reconcilePause(topicPartition)
            // What the shard's view and events say follows what librdkafka has: a shard whose pause set is still
            // to be handed to the consumer is shown (tripped, off, running) once it was, at the end of the event.
            if shard.desiredPauseReasons != shard.appliedPauseReasons || awaitingPublication.contains(topicPartition) {
                awaitingPublication.insert(topicPartition)
                pendingPublications.append((topicPartition, actions.events))
            } else {
                host.updateView(shard)
                for event in actions.events { publish(topicPartition, event) }
            }
        }
    }

    /// A shard that tripped, or left `tripped` other than by being released (reset, flag cycle, probe), is
    /// published for the group, so the next owner of the partition knows.
    private func publishTripChange(_ topicPartition: TopicPartition, wasTripped: Bool) {
        guard let tripUpdates, let shard = shards[topicPartition] else { return }
        let state = shard.machine.state
        if case .tripped(_, let reason, _) = state, !wasTripped {
            tripUpdates.yield((topicPartition, ControlRecord.Trip(offset: shard.restartOffset, reason: reason)))
        } else if wasTripped, !state.isTripped, state != .stopped {
            tripUpdates.yield((topicPartition, nil))
        }
    }

    /// Notes that the shard's pause set may have changed; ``flushPauses()`` hands it to the consumer at the end
    /// of the event (docs/architecture.md §5). Nothing adds or removes a single reason.
    private mutating func reconcilePause(_ topicPartition: TopicPartition) {
        pendingPauses.insert(topicPartition)
    }

    /// Derives the whole pause set of every shard an event touched from its state and hands them to the
    /// consumer in one round trip, which reconciles them with librdkafka. One per event, not one per shard:
    /// a flag for a topic of 2,500 partitions, or a shutdown of 10,000 shards, is one call to the consumer's
    /// thread, not thousands made one after another.
    mutating func flushPauses() async {
        guard !pendingPauses.isEmpty || !pendingPublications.isEmpty else { return }
        var changes: [TopicPartition: Set<KafkaPauseReason>] = [:]
        for topicPartition in pendingPauses {
            guard let shard = shards[topicPartition] else { continue }
            let desired = shard.desiredPauseReasons
            if desired != shard.appliedPauseReasons { changes[topicPartition] = desired }
        }
        pendingPauses.removeAll(keepingCapacity: true)
        if !changes.isEmpty {
            await consumer.setPauseReasons(changes)
            for (topicPartition, desired) in changes { shards[topicPartition]?.appliedPauseReasons = desired }
        }
        let publications = pendingPublications
        pendingPublications.removeAll(keepingCapacity: true)
        awaitingPublication.removeAll(keepingCapacity: true)
        var shown: Set<TopicPartition> = []
        for (topicPartition, events) in publications {
            if let shard = shards[topicPartition], shown.insert(topicPartition).inserted { host.updateView(shard) }
            for event in events { publish(topicPartition, event) }
        }
    }

    /// The current pipeline of a shard asked for back-pressure, or said it has room again.
    private mutating func backpressure(_ topicPartition: TopicPartition, pipelineID: UInt64, _ on: Bool) async {
        guard let pipeline = shards[topicPartition]?.pipeline, pipeline.generation == pipelineID else { return }
        shards[topicPartition]!.backpressured = on
        reconcilePause(topicPartition)
    }

    private func publish(_ topicPartition: TopicPartition, _ event: ShardSupervisor.StateMachine<ContinuousClock.Instant>.Event) {
        let kind: ShardEvent.Kind
        switch event {
        case .started(let attempt, let probe):
            kind = .started(attempt: attempt, probe: probe)
            logger.info(probe ? "shard started (half-open probe)" : "shard started", metadata: metadata(topicPartition, ["sluice.attempt": "\(attempt)"]))
        case .stopped(let reason):
            kind = .stopped(reason)
            logger.info("shard stopped", metadata: metadata(topicPartition, ["sluice.reason": "\(reason.rawValue)"]))
        case .crashed(let reason, let attempt):
            kind = .crashed(reason: reason, attempt: attempt)
            logger.error("shard crashed", metadata: metadata(topicPartition, ["sluice.attempt": "\(attempt)", "error": "\(reason)"]))
        case .backingOff(let until):
            kind = .backingOff(until: until)
            logger.warning("shard backing off", metadata: metadata(topicPartition, ["sluice.restartIn": "\(until - clock.now)"]))
        case .tripped(let reason):
            kind = .tripped(reason: reason)
            logger.error("shard tripped: stays down until a flag cycle, a reset or a probe", metadata: metadata(topicPartition, ["error": "\(reason)"]))
        case .reset:
            kind = .reset
        case .healthy:
            kind = .healthy
            logger.info("shard healthy again", metadata: metadata(topicPartition))
        }
        host.publish(ShardEvent(topicPartition: topicPartition, kind: kind))
    }

    private func publish(_ topicPartition: TopicPartition, _ kind: ShardEvent.Kind) {
        host.publish(ShardEvent(topicPartition: topicPartition, kind: kind))
    }

    /// Counts shards by state for `sluice_shards{state}`: on every tick, and after other events at most every
    /// 100 ms (counting is a pass over every shard, and a rebalance or shutdown of thousands of shards is
    /// thousands of events).
    private mutating func recordStateGauges(force: Bool) {
        let now = ContinuousClock.now
        guard force || now - lastStateGauges >= .milliseconds(100) else { return }
        lastStateGauges = now
        var counts: [String: Int] = [:]
        for shard in shards.values { counts[shard.state.name, default: 0] += 1 }
        for (name, gauge) in stateGauges { gauge.record(counts[name, default: 0]) }
    }

    private func metadata(_ topicPartition: TopicPartition, _ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        var result = extra
        result["kafka.topic"] = "\(topicPartition.topic)"
        result["kafka.partition"] = "\(topicPartition.partition)"
        return result
    }
}

/// Tells the supervisor loop a pipeline's back-pressure state; the loop folds it into the shard's desired
/// pause set (for as long as that pipeline is the shard's current one).
struct SupervisorFlowControl: ShardFlowControl {
    let input: AsyncStream<SluiceHost.Input>.Continuation
    let topicPartition: TopicPartition

    func setBackpressure(_ on: Bool, pipeline: UInt64) {
        input.yield(.backpressure(topicPartition, pipeline: pipeline, on))
    }
}
