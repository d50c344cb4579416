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

/// Running: the control plane loaded, the consumer made, the handlers checked against the configuration, and
/// the supervisor loop with the host's periodic work around it.
extension SluiceHost {
    /// Joins the group and runs shards until shutdown.
    ///
    /// - Throws: ``SluiceError`` when handlers and configuration do not match, `KafkaError` when the
    ///   Kafka client cannot be created (a bad librdkafka property is named).
    public func run() async throws {
        let handlers = try startOnce()
        defer { state.withLock { $0.ended = true } }
        if supervisesWorkers {
            try await superviseWorkers()
            return
        }
        if let worker { startHeartbeat(worker) }
        if configuration.control.enabled {
            if try configuration.control.keys() == nil {
                logger.warning(
                    "control records are not signed (control.hostKey and control.operatorPublicKey are not set): anyone who can write to the control topic can act as an operator; see docs/security.md",
                    metadata: ["kafka.topic": "\(configuration.controlTopic)"])
            }
            guard let control else {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "control: the control topic reader could not be created (check kafka.bootstrap and kafka.properties)"
                )
            }
            if configuration.control.createTopics { try await ensureControlTopics(control.topic) }
            // Every record written before now applies before any partition of ours fetches.
            try await control.load(timeout: configuration.control.loadTimeout)
            // Read (so it exists, with one partition): then whether it keeps its records.
            do {
                try await checkCompacted(control.topic)
            } catch {
                await control.close()
                throw error
            }
            logger.info(
                "control plane loaded",
                metadata: ["kafka.topic": "\(control.topic)", "sluice.position": "\(control.appliedPosition)"])
        }
        do {
            if configuration.crashJournal {
                // Before joining: what the last process died of is quarantined before any partition fetches.
                let configuration = self.configuration
                let containment = try await CrashContainment.start(
                    configuration: configuration, control: control, host: identity,
                    clusterID: {
                        try await KafkaClusterID.query(
                            bootstrapServers: configuration.kafka.bootstrap,
                            properties: configuration.controlProperties,
                            timeout: configuration.control.loadTimeout)
                    }, logger: logger)
                state.withLock { $0.crashContainment = containment }
                registry.keepProgress(in: containment.journal.progress)
            }
            try await runConsumer(handlers)
        } catch {
            registry.keepProgress(in: nil)
            crashContainment?.journal.close()
            await control?.close()
            throw error
        }
        registry.keepProgress(in: nil)
        crashContainment?.journal.close()
        await control?.close()
    }

    func runConsumer(_ handlers: [String: AnyHandler]) async throws {
        await flags.refresh()
        // A flag file that cannot be read at start would mean every shard runs, whatever it says.
        if configuration.flags.file != nil, let error = flags.lastErrors["file"] {
            throw SluiceError(
                code: .configuration, message: "flags.file: \(error); the host does not start without its flags")
        }
        let flags = self.flags
        let consumer = try KafkaConsumer(
            configuration: configuration.consumerConfiguration(),
            initialPauseReasons: { flags.setting(for: $0).enabled ? [] : [.flag] },
            logger: logger)
        // What the last process finished and had not committed when it died is not fetched again: progress of this
        // group, on whichever cluster the consumer turns out to be connected to.
        let group = configuration.kafka.group
        // Not for exactly-once topics: what was done there and not committed in a transaction has no output.
        let atLeastOnce: (TopicPartitionOffset) -> Bool = {
            self.configuration.topics[$0.topicPartition.topic]?.output != .exactlyOnce
        }
        if let progress = crashContainment?.journal.predecessorsProgress.filter({ $0.key.group == group }) {
            let usable = progress.map { ($0.key.cluster, $0.value.filter(atLeastOnce)) }.filter { !$0.1.isEmpty }
            if !usable.isEmpty { consumer.resume(from: Dictionary(usable) { $1 }) }
        }
        do {
            try await checkTopics(consumer)
        } catch {
            await consumer.close()
            throw error
        }
        // A topic with a dead-letter topic writes to it on a failure (`onFailure.then`), a crash (`onCrash.then`)
        // or an operator's release of a quarantined message, whatever its policies say.
        // One producer for both, and for handlers' output: connected at its first use.
        let needsDeadLetters = configuration.topics.values.contains { $0.deadLetterTopic != nil }
        let producer = SharedProducer(configuration: configuration.producerConfiguration(), logger: logger)
        let output = KafkaOutputSink(producer: producer, instrument: tracer, metricsFactory: metricsFactory)
        let transactions = ShardTransaction.Factory(
            producerConfiguration: configuration.producerConfiguration(), group: group,
            groupMetadata: { try consumer.groupMetadata() }, interval: configuration.kafka.commitInterval,
            logger: logger)
        try await run(
            handlers: handlers, consumer: consumer, producer: producer,
            deadLetters: needsDeadLetters ? KafkaDeadLetterSink(producer: producer, instrument: tracer) : nil,
            output: output,
            exactlyOnce: ExactlyOnceOutput(
                transactions: transactions,
                sink: TransactionalOutputSink(producer: producer, topics: output.topics, instrument: tracer),
                instrument: tracer))
    }

    /// Runs the supervisor loop over `consumer` until shutdown: the part of ``run()`` that does not create
    /// Kafka clients, so tests drive it through ``ShardConsumer`` without a cluster.
    func run(
        handlers: [String: AnyHandler], consumer: any ShardConsumer, producer: SharedProducer?,
        deadLetters: (any DeadLetterSink)?, output: (any OutputSink)? = nil, exactlyOnce: ExactlyOnceOutput? = nil
    ) async throws {
        try await run(
            handlers: handlers, consumer: consumer, producer: producer, deadLetters: deadLetters, output: output,
            exactlyOnce: exactlyOnce, shardControl: control)
    }

    /// Runs with `shardControl` as what the supervisor loop asks of the control plane (a test's, or ``control``).
    func run(
        handlers: [String: AnyHandler], consumer: any ShardConsumer, producer: SharedProducer?,
        deadLetters: (any DeadLetterSink)?, output: (any OutputSink)? = nil, exactlyOnce: ExactlyOnceOutput? = nil,
        shardControl: (any ShardControlState)?
    ) async throws {
        // Handler code runs on threads of its own, which grow past a blocked one; the supervisor loop, its
        // timers, the watchdogs and the flag poller run on another thread. Neither is Swift's cooperative
        // pool, so handlers that block threads cannot stop the host's control side, nor each other.
        let blockedGauge = Gauge(label: "sluice_handler_threads_blocked", factory: metricsFactory)
        let handlerExecutor = ThreadPoolExecutor(
            name: "sluice-handler", threads: configuration.handlerThreads,
            maximumThreads: max(configuration.maxHandlerThreads, configuration.handlerThreads),
            blockedAfter: configuration.blockedThreadAfter, clock: realTime
        ) { [logger] report in
            blockedGauge.record(report.blocked)
            self.state.withLock { $0.blockedHandlerThreads = report.blocked }
            if report.saturated {
                logger.error(
                    "every handler thread is blocked; handlers wait until one returns (handlerTimeout crashes their shards)",
                    metadata: ["sluice.blockedThreads": "\(report.blocked)", "sluice.threads": "\(report.threads)"])
            } else if report.blocked > 0 {
                logger.warning(
                    "a handler holds its thread without suspending (blocking I/O, sleep or a CPU loop); another thread runs the other handlers",
                    metadata: ["sluice.blockedThreads": "\(report.blocked)", "sluice.threads": "\(report.threads)"])
            }
        }
        let controlExecutor = ThreadPoolExecutor(
            name: "sluice-control", threads: 1, maximumThreads: 4, blockedAfter: .seconds(1), clock: realTime
        ) { [logger] report in
            if report.blocked > 0 {
                logger.error(
                    "the supervisor's thread is blocked (a flag source or sink that blocks?); another thread took over",
                    metadata: ["sluice.blockedThreads": "\(report.blocked)"])
            }
        }
        defer {
            handlerExecutor.shutdown()
            controlExecutor.shutdown()
        }
        try await withTaskExecutorPreference(controlExecutor) {
            try await supervise(
                handlers: handlers, consumer: consumer, producer: producer, deadLetters: deadLetters, output: output,
                exactlyOnce: exactlyOnce, handlerExecutor: handlerExecutor,
                shardControl: shardControl)
        }
    }

    func supervise(
        handlers: [String: AnyHandler], consumer: any ShardConsumer, producer: SharedProducer?,
        deadLetters: (any DeadLetterSink)?, output: (any OutputSink)?, exactlyOnce: ExactlyOnceOutput?,
        handlerExecutor: ThreadPoolExecutor, shardControl: (any ShardControlState)?
    ) async throws {
        let flags = self.flags
        let controlWriter = try control.map { _ in try configuration.controlWriter(logger: logger) }
        let (inputs, input) = AsyncStream.makeStream(of: Input.self)
        let alreadyShuttingDown = state.withLock { state -> Bool in
            state.consumer = consumer
            state.inputs = input
            state.running = true
            state.lastTick = .now
            return state.shutdownRequested
        }
        if alreadyShuttingDown { input.yield(.shutdownRequested) }
        try await consumer.subscribe(topics: handlers.keys.sorted())
        logger.info(
            "host started",
            metadata: ["kafka.group": "\(configuration.kafka.group)", "kafka.topics": "\(handlers.keys.sorted())"])

        await withGracefulShutdownHandler {
            // Discarding: a pipeline's task is freed when it ends. A plain task group kept every ended child
            // until the host stopped, and then removed them one by one, each a walk of the list (`--scale`).
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await event in consumer.events { input.yield(.kafka(event)) }
                    input.yield(.consumerClosed)
                }
                group.addTask { await flags.run(clock: self.realTime) { input.yield(.flagsChanged) } }
                // Trips and their clearing go to the group's control topic in the order they happen.
                let (tripUpdates, tripUpdate) = AsyncStream.makeStream(of: (TopicPartition, ControlRecord.Trip?).self)
                if let writer = controlWriter, let control {
                    let publisher = HostStatusPublisher(
                        identity: identity, writer: writer,
                        observe: { self.statusObserved(applied: control.loadedPosition) },
                        record: { [started = Int64(Date().timeIntervalSince1970 * 1000)] said in
                            self.statusRecord(said, startedAt: started)
                        },
                        clock: realTime, metricsFactory: metricsFactory, logger: logger)
                    group.addTask { try? await publisher.run() }
                    let trips = TripPublisher(
                        writer: writer, updates: tripUpdates, metricsFactory: metricsFactory, logger: logger)
                    group.addTask { try? await trips.run() }
                }
                let lag = LagRefresher(
                    registry: registry, consumer: consumer, clock: clock, interval: configuration.lagRefreshInterval)
                group.addTask { try? await lag.run() }
                let storer = WatermarkStorer(
                    registry: registry, consumer: consumer, clock: realTime, interval: .milliseconds(100))
                group.addTask { try? await storer.run() }
                if worker != nil {
                    // The supervisor shows this worker's shards from what it writes each second.
                    let report = PeriodicTask(interval: WorkerReports.interval, clock: realTime) {
                        self.writeWorkerShards()
                    }
                    group.addTask { try? await report.run() }
                }
                let tick = PeriodicTask(interval: .seconds(1), clock: clock) { input.yield(.tick) }
                group.addTask { try? await tick.run() }
                let environment = SupervisorLoop.Environment(
                    configuration: configuration, flags: flags, registry: registry, clock: clock,
                    watchdogClock: realTime,
                    carefulGate: carefulGate, crashContainment: crashContainment, metricsFactory: metricsFactory,
                    tracer: tracer)
                var loop = SupervisorLoop(
                    host: self, environment: environment, handlers: handlers, consumer: consumer, producer: producer,
                    deadLetters: deadLetters, output: output, exactlyOnce: exactlyOnce, input: input,
                    handlerExecutor: handlerExecutor,
                    tripUpdates: controlWriter == nil ? nil : tripUpdate, control: shardControl, logger: logger)
                for await item in inputs {
                    await loop.handle(item, group: &group)
                    if loop.finished { break }
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.shutdown()
        }
        if let controlWriter {
            // Writers stop waiting for a host that left.
            try? await controlWriter.setHost(identity, nil)
            await controlWriter.close()
        }
        input.finish()
        let subscribers = state.withLock { state in
            state.inputs = nil
            state.running = false
            defer { state.subscribers.removeAll() }
            return Array(state.subscribers.values)
        }
        for subscriber in subscribers { subscriber.finish() }
        logger.info("host stopped")
    }

    func startOnce() throws -> [String: AnyHandler] {
        var handlers = try state.withLock { state -> [String: AnyHandler] in
            guard !state.started else { throw SluiceError(code: .state, message: "a SluiceHost runs once") }
            state.started = true
            return state.handlers
        }
        // A retry topic's messages go to its topic's handler.
        for (topic, settings) in configuration.topics where handlers[topic] == nil {
            if let stage = settings.retryStage, let handler = handlers[stage.topic] { handlers[topic] = handler }
        }
        try validate(handlers)
        return handlers
    }

    /// Checks that handlers and topic settings fit together.
    func validate(_ handlers: [String: AnyHandler]) throws {
        let file = configuration.sourceFile.map { "\($0): " } ?? ""
        if let clash = configuration.retryTopicClashes.first {
            throw SluiceError(
                code: .configuration,
                message:
                    "\(file)topics.\(clash.topic).onFailure.delays: its retry topic '\(clash.retryTopic)' is also configured as a topic of its own; rename one"
            )
        }
        for topic in configuration.topics.keys.sorted() where handlers[topic] == nil {
            throw SluiceError(
                code: .registration,
                message:
                    "\(file)topics.\(topic): topic '\(topic)' is configured but no handler is registered for it (host.register(\"\(topic)\", ...))"
            )
        }
        guard !handlers.isEmpty else {
            throw SluiceError(
                code: .registration, message: "no handler is registered; register one per topic before run()")
        }
        for (topic, handler) in handlers.sorted(by: { $0.key < $1.key }) {
            let settings = configuration.topics[topic] ?? TopicConfiguration()
            try settings.validate(topic: topic)
            if let deadLetterTopic = settings.deadLetterTopic, handlers[deadLetterTopic] != nil {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "\(file)topics.\(topic).deadLetterTopic: \(SluiceConfiguration.deadLetterLoop(deadLetterTopic))"
                )
            }
            switch (handler, settings.batch) {
            case (.batch, nil):
                throw SluiceError(
                    code: .registration,
                    message:
                        "topic '\(topic)' has a BatchHandler but no batch settings (topics.\(topic).batch: {size, timeout})"
                )
            case (.message, .some):
                throw SluiceError(
                    code: .registration,
                    message: "topic '\(topic)' has batch settings but a MessageHandler; register a BatchHandler")
            default:
                break
            }
        }
    }
}
