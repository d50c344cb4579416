import Logging
import ServiceLifecycle
import SluiceKafka
import Synchronization

/// Runs a service's Kafka consumers: one Broadway-style pipeline per assigned partition (a *shard*), with
/// at-least-once offsets, rebalancing that drains revoked shards before releasing them, and a graceful
/// shutdown that finishes in-flight work, commits and leaves the group.
///
/// ```swift
/// let host = try SluiceHost(configuration: .load(file: "sluice.yaml"), logger: logger)
/// host.register("orders", OrderHandler())
/// host.register("payments", batchHandler: PaymentsSink())
/// try await host.run()   // a Service: drains and commits on graceful shutdown
/// ```
public final class SluiceHost: Service, Sendable {
    private struct ShardEntry {
        let generation: UInt64
        let pipeline: ShardPipeline
        var state: ShardState = .running
        var storedOffset: Int64?
        var finished = false
    }

    private struct State {
        var handlers: [String: AnyHandler] = [:]
        var shards: [TopicPartition: ShardEntry] = [:]
        var nextGeneration: UInt64 = 0
        var started = false
        var shuttingDown = false
        var consumer: KafkaConsumer?
    }

    /// The configuration the host runs with.
    public let configuration: SluiceConfiguration
    private let logger: Logger
    private let state = Mutex(State())
    private let beacon = Beacon()

    /// Creates a host. Handlers are registered next; nothing connects before ``run()``.
    public init(configuration: SluiceConfiguration, logger: Logger = Logger(label: "sluice")) {
        self.configuration = configuration
        self.logger = logger
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
        let (entries, consumer) = state.withLock { (Array($0.shards), $0.consumer) }
        return entries.map { topicPartition, entry in
            let counters = entry.pipeline.counters
            return ShardStatus(
                topicPartition: topicPartition, generation: entry.generation, state: entry.state,
                inFlight: entry.pipeline.inFlight, processed: counters.processed, failed: counters.failed,
                skipped: counters.skipped, deadLettered: counters.deadLettered, storedOffset: entry.storedOffset,
                highWatermark: consumer?.cachedWatermarks(for: topicPartition)?.high)
        }.sorted { $0.topicPartition < $1.topicPartition }
    }

    /// Starts a graceful shutdown: stop fetching, finish in-flight work (up to `shutdownTimeout`), commit,
    /// leave the group; ``run()`` then returns. Graceful shutdown of a service group does the same.
    public func shutdown() {
        state.withLock { $0.shuttingDown = true }
        beacon.notify()
    }

    /// Joins the group and runs shards until shutdown.
    ///
    /// - Throws: ``SluiceError`` when handlers and configuration do not match, ``KafkaError`` when the
    ///   Kafka client cannot be created (a bad librdkafka property is named).
    public func run() async throws {
        let handlers = try startOnce()
        let consumer = try KafkaConsumer(configuration: configuration.consumerConfiguration(), logger: logger)
        let needsDeadLetters = configuration.topics.values.contains { $0.onFailure.then == .deadLetter }
        let producer = needsDeadLetters
            ? try KafkaProducer(configuration: configuration.producerConfiguration(), logger: logger) : nil
        let deadLetters = producer.map { KafkaDeadLetterSink(producer: $0) }
        state.withLock { $0.consumer = consumer }
        try await consumer.subscribe(topics: handlers.keys.sorted())
        logger.info("host started", metadata: ["kafka.group": "\(configuration.kafka.group)", "kafka.topics": "\(handlers.keys.sorted())"])

        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.shutdownWhenRequested(consumer: consumer, producer: producer) }
                for await event in consumer.events {
                    switch event {
                    case .assigned(let partitions):
                        for topicPartition in partitions {
                            guard let handler = handlers[topicPartition.topic],
                                let messages = consumer.messages(for: topicPartition)
                            else { continue }
                            let pipeline = makePipeline(topicPartition, handler: handler, consumer: consumer, deadLetters: deadLetters)
                            group.addTask {
                                await self.runShard(pipeline, messages: messages, consumer: consumer)
                            }
                        }
                    case .revoked(let revocation):
                        group.addTask { await self.drainRevoked(revocation) }
                    case .lost(let partitions):
                        release(partitions)
                    case .error(let error):
                        logger.debug("kafka error event", metadata: ["kafka.error": "\(error.message)"])
                    }
                }
                // The consumer closed: shutdown is complete or the task was cancelled.
                shutdown()
            }
        } onGracefulShutdown: {
            self.shutdown()
        }
        logger.info("host stopped")
    }

    private func startOnce() throws -> [String: AnyHandler] {
        let handlers = try state.withLock { state -> [String: AnyHandler] in
            guard !state.started else { throw SluiceError(code: .state, message: "a SluiceHost runs once") }
            state.started = true
            return state.handlers
        }
        try validate(handlers)
        return handlers
    }

    /// Checks that handlers and topic settings fit together.
    func validate(_ handlers: [String: AnyHandler]) throws {
        let file = configuration.sourceFile.map { "\($0): " } ?? ""
        for topic in configuration.topics.keys.sorted() where handlers[topic] == nil {
            throw SluiceError(
                code: .registration,
                message: "\(file)topics.\(topic): topic '\(topic)' is configured but no handler is registered for it (host.register(\"\(topic)\", ...))")
        }
        guard !handlers.isEmpty else {
            throw SluiceError(code: .registration, message: "no handler is registered; register one per topic before run()")
        }
        for (topic, handler) in handlers.sorted(by: { $0.key < $1.key }) {
            let settings = configuration.topics[topic] ?? TopicConfiguration()
            try settings.validate(topic: topic)
            switch (handler, settings.batch) {
            case (.batch, nil):
                throw SluiceError(
                    code: .registration,
                    message: "topic '\(topic)' has a BatchHandler but no batch settings (topics.\(topic).batch: {size, timeout})")
            case (.message, .some):
                throw SluiceError(
                    code: .registration,
                    message: "topic '\(topic)' has batch settings but a MessageHandler; register a BatchHandler")
            default:
                break
            }
        }
    }

    private func makePipeline(
        _ topicPartition: TopicPartition,
        handler: AnyHandler,
        consumer: KafkaConsumer,
        deadLetters: (any DeadLetterSink)?
    ) -> ShardPipeline {
        state.withLock { state in
            state.nextGeneration += 1
            let pipeline = ShardPipeline(
                topicPartition: topicPartition, generation: state.nextGeneration,
                configuration: configuration.topics[topicPartition.topic] ?? TopicConfiguration(),
                handler: handler, deadLetters: deadLetters,
                flowControl: ConsumerFlowControl(consumer: consumer, topicPartition: topicPartition),
                drainTimeout: configuration.drainTimeout, logger: logger)
            state.shards[topicPartition] = ShardEntry(generation: state.nextGeneration, pipeline: pipeline)
            if state.shuttingDown { pipeline.requestStop() }
            return pipeline
        }
    }

    // MARK: Shards

    private func runShard(_ pipeline: ShardPipeline, messages: KafkaPartitionMessages, consumer: KafkaConsumer) async {
        let topicPartition = pipeline.topicPartition
        let outcome = await withTaskGroup(of: ShardPipeline.Outcome?.self) { group in
            // Stores the watermark as it advances, so periodic commits carry progress.
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(100))
                    self.storeWatermark(pipeline, consumer: consumer)
                }
                return nil
            }
            group.addTask { await pipeline.run(source: ShardSource(messages: messages)) }
            var outcome: ShardPipeline.Outcome?
            for await result in group where result != nil {
                outcome = result
                group.cancelAll()
            }
            return outcome ?? .sourceEnded
        }
        storeWatermark(pipeline, consumer: consumer)
        if case .crashed(let crash) = outcome {
            // Until the supervisor restarts it, a crashed shard stays stopped at the failing offset.
            await consumer.pause(topicPartition, reason: .breaker)
            logger.error(
                "shard crashed and stays stopped",
                metadata: ["kafka.topic": "\(topicPartition.topic)", "kafka.partition": "\(topicPartition.partition)", "sluice.crash": "\(crash)"])
        }
        state.withLock { state in
            guard var entry = state.shards[topicPartition], entry.generation == pipeline.generation else { return }
            entry.finished = true
            if case .crashed(let crash) = outcome { entry.state = .crashed(crash) } else { entry.state = .stopped }
            state.shards[topicPartition] = entry
        }
        beacon.notify()
    }

    /// Stores the pipeline's watermark if it advanced and the shard is still the partition's current one.
    private func storeWatermark(_ pipeline: ShardPipeline, consumer: KafkaConsumer) {
        guard let watermark = pipeline.watermark else { return }
        let topicPartition = pipeline.topicPartition
        let store = state.withLock { state -> Bool in
            guard var entry = state.shards[topicPartition], entry.generation == pipeline.generation,
                entry.storedOffset != watermark
            else { return false }
            entry.storedOffset = watermark
            state.shards[topicPartition] = entry
            return true
        }
        guard store else { return }
        do {
            try consumer.storeOffsets([TopicPartitionOffset(topicPartition, offset: watermark)])
        } catch {
            logger.debug("offset not stored", metadata: ["kafka.partition": "\(topicPartition)", "kafka.error": "\(error)"])
        }
    }

    private func drainRevoked(_ revocation: KafkaRevocation) async {
        let partitions = revocation.partitions
        let pipelines = state.withLock { state in
            partitions.compactMap { topicPartition -> ShardPipeline? in
                guard var entry = state.shards[topicPartition] else { return nil }
                if case .running = entry.state { entry.state = .draining }
                state.shards[topicPartition] = entry
                return entry.pipeline
            }
        }
        // Their message sequences have ended; the pipelines finish what is in flight.
        let deadline = ContinuousClock.now + configuration.revokeTimeout
        let drained = await beacon.waitUntil(deadline: deadline) {
            self.state.withLock { state in partitions.allSatisfy { state.shards[$0]?.finished ?? true } }
        }
        if !drained {
            logger.warning("revoked shards did not drain in time; releasing them", metadata: ["kafka.partitions": "\(partitions)"])
            for pipeline in pipelines { pipeline.requestStop() }
        }
        release(partitions)
        revocation.done()
    }

    /// Forgets shards: their late completions are never stored.
    private func release(_ partitions: [TopicPartition]) {
        state.withLock { state in
            for topicPartition in partitions { state.shards[topicPartition] = nil }
        }
        beacon.notify()
    }

    // MARK: Shutdown

    private func shutdownWhenRequested(consumer: KafkaConsumer, producer: KafkaProducer?) async {
        _ = await beacon.waitUntil { self.state.withLock { $0.shuttingDown } }
        logger.info("host shutting down: draining shards")
        let entries = state.withLock { state in
            for (topicPartition, var entry) in state.shards where entry.state == .running {
                entry.state = .draining
                state.shards[topicPartition] = entry
            }
            return state.shards
        }
        for (topicPartition, entry) in entries {
            entry.pipeline.requestStop()
            await consumer.pause(topicPartition, reason: .draining)
        }
        let drained = await beacon.waitUntil(deadline: .now + configuration.shutdownTimeout) {
            self.state.withLock { $0.shards.values.allSatisfy(\.finished) }
        }
        if !drained { logger.warning("shards did not drain within shutdownTimeout; committing what completed") }
        for entry in entries.values { storeWatermark(entry.pipeline, consumer: consumer) }
        do {
            try await consumer.commit()
        } catch {
            logger.warning("final commit failed", metadata: ["kafka.error": "\(error)"])
        }
        await consumer.close()
        await producer?.close()
    }
}

extension ShardState {
    fileprivate static func == (lhs: ShardState, rhs: ShardState) -> Bool {
        switch (lhs, rhs) {
        case (.running, .running), (.draining, .draining), (.stopped, .stopped): true
        case (.crashed(let left), .crashed(let right)): left == right
        default: false
        }
    }
}

/// Pauses and resumes a shard's partition for back-pressure.
struct ConsumerFlowControl: ShardFlowControl {
    let consumer: KafkaConsumer
    let topicPartition: TopicPartition

    func pauseForBackpressure() async { await consumer.pause(topicPartition, reason: .backpressure) }
    func resumeAfterBackpressure() async { await consumer.resume(topicPartition, reason: .backpressure) }
}

/// A partition's batches as ``Message`` batches.
struct ShardSource: AsyncSequence, Sendable {
    typealias Element = [Message]
    typealias Failure = Never
    let messages: KafkaPartitionMessages

    func makeAsyncIterator() -> Iterator { Iterator(base: messages.makeAsyncIterator()) }

    struct Iterator: AsyncIteratorProtocol {
        let base: KafkaPartitionMessages.Iterator
        func next() async -> [Message]? {
            var base = base
            return await base.next().map { batch in batch.map(Message.init) }
        }
        mutating func next(isolation actor: isolated (any Actor)?) async -> [Message]? { await next() }
    }
}
