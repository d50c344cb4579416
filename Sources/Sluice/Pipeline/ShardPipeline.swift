import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// One shard's Broadway-style pipeline: a dispatcher takes message batches from the partition and hands
/// each message to a lane (one lane for `partition` ordering, one per key hash for `key`, a shared queue
/// for `none`); lanes call the handler, one message or one batch at a time, apply the failure policy and
/// record completions in the contiguous offset watermark.
///
/// Lanes are tasks the pipeline owns rather than children of a task group: Swift cannot stop a handler
/// that ignores cancellation, and a task group would wait for it forever. A handler that exceeds
/// `handlerTimeout` crashes the shard; its task is cancelled and abandoned, and its message is never
/// committed.
final class ShardPipeline: Sendable {
    /// How a pipeline run ended.
    enum Outcome: Sendable, Equatable {
        /// The source ended (the partition was revoked or the consumer closed) and in-flight work finished, or
        /// `drainTimeout` passed first (`drainTimedOut`: messages taken and not done are not committed, and are
        /// read again by whoever reads the partition next).
        case sourceEnded(drainTimedOut: Bool)
        /// ``requestStop()`` was called and in-flight work finished (or `drainTimeout` passed).
        case stopped(drainTimedOut: Bool)
        /// The pipeline crashed.
        case crashed(ShardCrash)
    }

    /// The metric handles of a shard, created once per shard and shared by its pipelines.
    struct Metrics: Sendable {
        let processed: Counter
        let failed: Counter
        let skipped: Counter
        let deadLettered: Counter
        let retriedLater: Counter
        /// Records of a retry topic whose due time could not be read (handled without waiting for it).
        let badRetryRecords: Counter
        let handlerDuration: Timer

        init(topic: String, factory: any MetricsFactory = MetricsSystem.factory) {
            let dimensions = [("topic", topic)]
            processed = Counter(label: "sluice_messages_processed_total", dimensions: dimensions, factory: factory)
            failed = Counter(label: "sluice_handler_failures_total", dimensions: dimensions, factory: factory)
            skipped = Counter(label: "sluice_messages_skipped_total", dimensions: dimensions, factory: factory)
            deadLettered = Counter(
                label: "sluice_messages_dead_lettered_total", dimensions: dimensions, factory: factory)
            retriedLater = Counter(
                label: "sluice_messages_retried_later_total", dimensions: dimensions, factory: factory)
            badRetryRecords = Counter(
                label: "sluice_retry_records_rejected_total", dimensions: dimensions, factory: factory)
            handlerDuration = Timer(
                label: "sluice_handler_duration_seconds", dimensions: dimensions, preferredDisplayUnit: .seconds,
                factory: factory)
        }
    }

    /// Counters a shard reports.
    struct Counters: Sendable, Equatable {
        var processed = 0
        var failed = 0
        var skipped = 0
        var deadLettered = 0
        /// Written to a retry topic (`onFailure: retryLater`).
        var retriedLater = 0
    }

    let topicPartition: TopicPartition
    let generation: UInt64
    let configuration: TopicConfiguration
    /// Which running call is past `handlerTimeout`, and when to look again.
    let watchdog: HandlerWatchdog
    let handler: AnyHandler
    let deadLetters: (any DeadLetterSink)?
    /// Where handlers' ``ShardContext/send(_:)`` writes.
    let output: (any OutputSink)?
    /// The shard's transaction, for `output: exactlyOnce`: output and offsets are committed in it (nothing is
    /// stored with the consumer).
    let transaction: ShardTransaction?
    /// With a transaction: the sink each handler call's context gets, bound to the call's records.
    let transactionalOutput: TransactionalOutputSink?
    let flowControl: any ShardFlowControl
    let drainTimeout: Duration
    /// The clock `drainTimeout` runs on (the host's: tests drive a manual one). The handler watchdog stays on
    /// real time: it exists to notice real time passing.
    let clock: any HostClock
    /// Real time, for what exists to notice real time passing: the handler watchdog, abandoned calls.
    let watchdogClock: any HostClock
    /// How long the dispatcher waits for room under `maxInFlight` before it pauses the partition.
    let backpressureGrace: Duration
    let metrics: Metrics
    let logger: Logger
    /// The bookkeeping; every change is one of its events, made in this lock.
    let state: Mutex<StateMachine>
    let activities: [LaneActivity]
    /// Mirrors `state.crash != nil` for the lanes' per-message checks.
    let crashed = Atomic<Bool>(false)
    /// What the dispatcher waits on (``DispatcherPhase``), for a stall report.
    let dispatcherPhase = Atomic<UInt8>(DispatcherPhase.predecessors.rawValue)

    enum DispatcherPhase: UInt8, CaseIterable {
        case predecessors, groupProgress, source, room, retryDue, throttle, ended
    }
    /// Mirrors `state.stopRequested`: lanes start no new handler call once it is set.
    let stopping = Atomic<Bool>(false)
    /// Notified when work completes or a lane ends: the dispatcher waiting for room under `maxInFlight`
    /// and the drain wait for it.
    let beacon = Beacon()
    /// Notified only on a stop request or a crash: the watchdog waits on it (and rechecks on a timer), so
    /// completions, thousands a second, do not wake it.
    let control = Beacon()
    /// Runs of messages for the lanes, in offset order within each queue.
    let queues: [WorkQueue<LaneRun>]
    /// Which queue each message goes to.
    let router: LaneRouter
    /// Offsets an earlier pipeline of this assignment finished above its watermark: taken again after a
    /// restart, they are completed without calling the handler a second time.
    /// Where lanes (and so handler code) run: the host's handler threads; nil for the default executor.
    let laneExecutor: (any TaskExecutor)?
    /// Earlier pipelines of the shard whose abandoned handler calls may still run: this one hands out no
    /// message until they ended or `abandonTimeout` passed, so no message is in two calls at once.
    let predecessors: [ShardPipeline]
    /// What the group's last commit says is done above it: skipped like `alreadyDone` once read.
    let groupProgress: GroupProgress?
    /// The rate flag's limit, if any.
    let rateLimit = Mutex<TokenBucket?>(nil)
    /// Where lanes note the message in their handler, so a trap is blamed on it after the restart.
    let journal: CrashJournal?
    /// A message that killed the process before, what it gets here, and the suspects handled one at a time.
    let quarantineGate: QuarantineGate
    /// Spans per handler call, when a tracer is bootstrapped (nil: tracing off, nothing per message).
    let tracing: MessageTracing?
    /// The bytes this shard may have in flight now (its share of the host's memory budget, which changes
    /// with the assignment); nil: only `maxInFlight` bounds it.
    let inFlightBytes: (@Sendable () -> Int?)?
    /// Told when the watermark may have moved (the host's watermark storer), once until ``progressPending`` is
    /// cleared: thousands of completions a second are one call.
    let onProgress: (@Sendable (ShardPipeline) -> Void)?
    /// Set when ``onProgress`` was told; the storer clears it before it reads the watermark.
    let progressPending = Atomic<Bool>(false)
    /// How long the first pipeline of an assignment waits for the group's progress before it hands out
    /// messages anyway (those are then handled at least once).
    static let groupProgressWait = Duration.seconds(5)

    /// What a pipeline works with from its host: time, where handler code runs, where dead letters and
    /// back-pressure go, the crash journal and careful gate, tracing, and whom to tell of progress.
    struct Environment: Sendable {
        /// The host's clock: drain timeout, retry backoffs, batch timeouts, back-pressure grace, rate.
        var clock: any HostClock
        /// Real time, for the handler watchdog and abandoned calls.
        var watchdogClock: any HostClock
        var flowControl: any ShardFlowControl
        var deadLetters: (any DeadLetterSink)?
        /// Where handlers' ``ShardContext/send(_:)`` writes; nil: sending fails.
        var output: (any OutputSink)? = nil
        /// The pipeline's transaction, for `output: exactlyOnce` (then `output` and `deadLetters` hold their
        /// records for it).
        var transaction: ShardTransaction? = nil
        var drainTimeout: Duration
        var backpressureGrace: Duration = ShardPipeline.defaultBackpressureGrace
        /// Where lanes (and so handler code) run; nil for the default executor.
        var laneExecutor: (any TaskExecutor)? = nil
        /// Where lanes note the message in their handler, so a trap is blamed on it after the restart.
        var journal: CrashJournal? = nil
        var carefulGate: CarefulGate
        /// Spans per handler call; nil: tracing off.
        var tracer: (any Tracer)? = MessageTracing.bootstrapped()
        var consumerGroup: String? = nil
        /// The bytes the shard may have in flight now; nil: only `maxInFlight` bounds it.
        var inFlightBytes: (@Sendable () -> Int?)? = nil
        /// Told when the watermark may have moved.
        var onProgress: (@Sendable (ShardPipeline) -> Void)? = nil
        var logger: Logger
    }

    /// Creates the pipeline of one run of a shard: `alreadyDone` offsets (done by an earlier pipeline of the
    /// assignment) are completed without a call, `predecessors` with abandoned calls are waited for, the group's
    /// progress is read from `groupProgress`, and `quarantine` says what a message that killed the process gets.
    init(
        topicPartition: TopicPartition, generation: UInt64, configuration: TopicConfiguration, handler: AnyHandler,
        alreadyDone: Set<Int64> = [], predecessors: [ShardPipeline] = [], groupProgress: GroupProgress? = nil,
        quarantine: Quarantine? = nil, metrics: Metrics? = nil, environment: Environment
    ) {
        self.onProgress = environment.onProgress
        self.inFlightBytes = environment.inFlightBytes
        self.tracing = environment.tracer.map {
            MessageTracing(tracer: $0, topicPartition: topicPartition, group: environment.consumerGroup)
        }
        self.journal = environment.journal
        self.quarantineGate = QuarantineGate(quarantine: quarantine, carefulGate: environment.carefulGate)
        self.predecessors = predecessors
        self.groupProgress = groupProgress
        self.laneExecutor = environment.laneExecutor
        self.metrics = metrics ?? Metrics(topic: topicPartition.topic)
        self.topicPartition = topicPartition
        self.generation = generation
        self.configuration = configuration
        self.handler = handler
        self.deadLetters = environment.deadLetters
        self.output = environment.output
        self.transaction = environment.transaction
        self.transactionalOutput =
            environment.transaction == nil ? nil : environment.output as? TransactionalOutputSink
        self.flowControl = environment.flowControl
        self.drainTimeout = environment.drainTimeout
        self.clock = environment.clock
        self.watchdogClock = environment.watchdogClock
        self.backpressureGrace = environment.backpressureGrace
        var logger = environment.logger
        logger[metadataKey: "kafka.topic"] = "\(topicPartition.topic)"
        logger[metadataKey: "kafka.partition"] = "\(topicPartition.partition)"
        logger[metadataKey: "sluice.generation"] = "\(generation)"
        self.logger = logger
        let lanes = configuration.laneCount
        self.state = Mutex(StateMachine(alreadyDone: alreadyDone))
        self.watchdog = HandlerWatchdog(timeoutNanoseconds: configuration.handlerTimeout.nanoseconds)
        self.activities = (0..<lanes).map { _ in
            LaneActivity(journal: environment.journal?.acquire(topicPartition, generation: generation))
        }
        self.router = LaneRouter(ordering: configuration.ordering, lanes: lanes)
        self.queues = (0..<router.queueCount).map { _ in WorkQueue(clock: environment.clock) }
    }

    /// The offset to commit: everything before it is done. Nil before the first message.
    var watermark: Int64? { state.withLock { $0.watermark } }

    /// Where the next pipeline of the shard must read from: the watermark, or the first offset this one took
    /// from its source without beginning it; nil when it took nothing.
    ///
    /// With a transaction: the offset its last commit gave the group (everything after it is aborted, output and
    /// offsets), or the first offset this pipeline took when it committed nothing.
    var restartOffset: Int64? {
        if let transaction {
            let committed = transaction.committedOffset
            return state.withLock { committed ?? $0.firstTaken }
        }
        return state.withLock { $0.restartOffset }
    }

    /// Offsets finished above the watermark (with `ordering: key` other keys run ahead of a failing one): the
    /// next pipeline after a restart does not hand them to the handler again.
    var completedAboveWatermark: Set<Int64> { state.withLock { $0.tracker.completedAboveWatermark } }

    /// Offsets done above the watermark, taken or not yet: what a commit's metadata carries to the next owner.
    /// With a transaction none: what is done above the last commit has no output in Kafka and is handled again.
    var doneAboveWatermark: Set<Int64> {
        if transaction != nil { return [] }
        return state.withLock { $0.doneAboveWatermark }
    }

    /// Messages taken again after a restart and completed without a handler call (they were done before).
    var redeliveriesSkipped: Int { state.withLock { $0.redeliveriesSkipped } }

    /// Handler calls in progress. After ``run(source:)`` returned, these are calls it abandoned (past
    /// `handlerTimeout`, or past the drain timeout): Swift cannot stop them.
    var callsInProgress: Int {
        activities.reduce(0) { $0 + ($1.call == nil ? 0 : 1) }
    }

    /// Messages taken from the partition and not yet done.
    var inFlight: Int { state.withLock { $0.inFlight } }

    /// What the pipeline waits on, for a stall report: the dispatcher's phase, how many lanes are in each
    /// phase, the lane queues' depth, what is in flight, and whether it was asked to stop or crashed.
    var stallReport: String {
        let (inFlight, lowest, stop, crash, lanesRunning) = state.withLock {
            ($0.inFlight, $0.watermark, $0.stopRequested, $0.crash != nil, $0.lanesRunning)
        }
        let dispatcher = DispatcherPhase(rawValue: dispatcherPhase.load(ordering: .relaxed)).map { "\($0)" } ?? "?"
        var lanes: [String: Int] = [:]
        for activity in activities {
            lanes[
                LaneActivity.Phase(rawValue: activity.phase.load(ordering: .relaxed)).map { "\($0)" } ?? "?", default: 0
            ] += 1
        }
        let depths = queues.map(\.depth)
        return
            "dispatcher \(dispatcher); lanes \(lanes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) "
            + "(running \(lanesRunning)); queued \(depths.reduce(0) { $0 + $1.queued }), lanes waiting on queues \(depths.reduce(0) { $0 + $1.waiting }); "
            + "in flight \(inFlight) above watermark \(lowest.map(String.init) ?? "-"); progress \(progress); stop \(stop), crashed \(crash)"
    }

    /// When the oldest message taken and not done was produced (ms since the epoch), if known.
    var oldestPendingTimestamp: Int64? { state.withLock { $0.tracker.oldestPendingTimestamp } }

    /// A measure of progress that changes whenever a message is done (handled, skipped or dead-lettered).
    var progress: Int {
        state.withLock { $0.progress }
    }

    /// Processed, failed, skipped and dead-lettered counts so far.
    var counters: Counters { state.withLock { $0.counters } }

    /// Stops at once: no message that is not in a handler call yet is started (queued ones are dropped,
    /// uncommitted, and read again by whoever handles the partition next); handler calls already running
    /// finish (up to the drain timeout), then ``run(source:)`` returns.
    func requestStop() {
        state.withLock { $0.stop() }
        stopping.store(true, ordering: .releasing)
        for queue in queues { _ = queue.drain() }
        beacon.notify()
        control.notify()
    }

    /// Tells ``onProgress`` that the watermark may have moved, unless it was told and has not looked yet; and
    /// the crash journal's progress file where it is now, for a successor should the process die before the
    /// watermark is stored and committed.
    func noteProgress(_ watermark: Int64? = nil, done: [Int64] = []) {
        if let watermark, let journal { journal.progress.advance(topicPartition, to: watermark, done: done) }
        guard let onProgress, !progressPending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        onProgress(self)
    }

    /// Whether lanes must not start another handler call.
    var halted: Bool {
        Task.isCancelled || crashed.load(ordering: .acquiring) || stopping.load(ordering: .acquiring)
    }

    /// Runs until the source ends, ``requestStop()`` is called, or the pipeline crashes.
    func run<Source: AsyncSequence & Sendable>(source: Source) async -> Outcome
    where Source.Element == [Message], Source.Failure == Never {
        await waitForPredecessors()
        if let groupProgress {
            dispatcherPhase.store(DispatcherPhase.groupProgress.rawValue, ordering: .relaxed)
            var done = groupProgress.done
            if done == nil { done = await groupProgress.wait(until: clock.now + Self.groupProgressWait, on: clock) }
            if let done, !done.isEmpty { state.withLock { $0.learnedDone(done) } }
        }
        if let transaction, let failure = await startTransaction(transaction) { return .crashed(failure) }
        let lanes = startLanes()
        // Phase 1: dispatch until the source ends, a stop is requested or a lane crashes. The watchdog runs
        // beside the dispatcher, so a stuck handler is noticed even while the dispatcher waits for input.
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.dispatch(source) }
            if let transaction { group.addTask { await self.commitTransactions(transaction) } }
            group.addTask {
                _ = await self.control.waitUntil(recheckAfter: { self.untilNextTimeout() }, on: self.watchdogClock) {
                    self.stopOrCrash()
                }
            }
            for await _ in group { group.cancelAll() }
        }
        // Back-pressure ends with the pipeline: the supervisor drops it from the shard's pause set.
        for queue in queues { queue.finish() }
        // Phase 2: let in-flight work finish, bounded by the drain timeout on the host's clock (and the watchdog,
        // on real time).
        let deadline = clock.now + drainTimeout
        let drainTimer = clock.schedule(at: deadline) { self.beacon.notify() }
        var finished = false
        _ = await beacon.waitUntil(deadline: nil, recheck: watchdogInterval, on: watchdogClock) {
            _ = self.stopOrCrash()
            let now = MonotonicNanoseconds.now()
            finished = self.state.withLock {
                $0.lanesRunning == 0 || ($0.crash != nil && self.noLaneMakingProgress(now: now))
            }
            return finished || self.clock.now >= deadline
        }
        clock.cancel(drainTimer)
        let (crash, stopRequested) = state.withLock { ($0.crash, $0.stopRequested) }
        if !finished || crash != nil {
            for lane in lanes { lane.cancel() }
        }
        // Completions a lane recorded but did not flush (it was stopped or is stuck in a later call).
        for activity in activities { flush(activity) }
        if let transaction {
            if let ended = await endTransaction(transaction, crashed: crash != nil) { return .crashed(ended) }
        }
        if let crash { return .crashed(crash) }
        if !finished {
            let (inFlight, watermark) = state.withLock { ($0.inFlight, $0.restartOffset) }
            logger.warning(
                "drainTimeout passed with messages not done: they are not committed, and whoever reads the partition next handles them",
                metadata: [
                    "sluice.notDone": "\(inFlight)", "sluice.drainTimeout": "\(drainTimeout)",
                    "kafka.offset": "\(watermark.map(String.init) ?? "-")",
                ])
        }
        if stopRequested { return .stopped(drainTimedOut: !finished) }
        return .sourceEnded(drainTimedOut: !finished)
    }

    /// Waits until the handler calls earlier pipelines abandoned ended, `abandonTimeout` passed, or a stop
    /// came. A call abandoned past `handlerTimeout` may still complete its message (its side effects,
    /// not its offset): handing the same message to a new call meanwhile would run it twice at once.
    func waitForPredecessors() async {
        let abandoned = predecessors.reduce(0) { $0 + $1.callsInProgress }
        guard abandoned > 0 else { return }
        logger.warning(
            "waiting for handler calls the last pipeline abandoned before handing out messages",
            metadata: [
                "sluice.abandonedCalls": "\(abandoned)", "sluice.abandonTimeout": "\(configuration.abandonTimeout)",
            ])
        // Real time: the abandoned calls run on it.
        let ended = await control.waitUntil(
            deadline: watchdogClock.now + configuration.abandonTimeout, recheck: .milliseconds(50), on: watchdogClock
        ) {
            self.state.withLock { $0.stopRequested } || self.predecessors.allSatisfy { $0.callsInProgress == 0 }
        }
        if !ended {
            logger.warning(
                "abandonTimeout passed; handing out messages while abandoned handler calls still run",
                metadata: ["sluice.abandonedCalls": "\(predecessors.reduce(0) { $0 + $1.callsInProgress })"])
        }
    }

    /// The default ``backpressureGrace``: long enough for a batch to finish, short enough that a stuck
    /// shard does not buffer for long.
    static let defaultBackpressureGrace = Duration.milliseconds(100)

    var watchdogInterval: Duration { min(configuration.handlerTimeout / 4, .milliseconds(250)) }

    /// True once a stop was requested or the pipeline crashed; crashes a shard whose handler is stuck.
    func stopOrCrash() -> Bool {
        let limit = configuration.handlerTimeout
        let stuck = watchdog.overdue(activities.lazy.compactMap(\.call), now: MonotonicNanoseconds.now())
        let (stopped, timedOutOffset) = state.withLock { state -> (Bool, Int64?) in
            if let offset = stuck?.offset,
                case .crashNow = state.crashed(ShardCrash(reason: .handlerTimeout(limit), offset: offset))
            {
                return (true, offset)
            }
            return (state.halted, nil)
        }
        if timedOutOffset != nil { crashed.store(true, ordering: .releasing) }
        if let timedOutOffset {
            logger.error(
                "handler timed out; crashing the shard",
                metadata: ["kafka.offset": "\(timedOutOffset)", "sluice.handlerTimeout": "\(limit)"])
        }
        return stopped
    }

    /// How long until the longest handler call running now reaches `handlerTimeout` (the whole timeout when
    /// none runs: a call that starts later reaches it later still). The watchdog sleeps that long, so it
    /// notices a timeout when it happens and an idle shard costs a wake-up per `handlerTimeout`, not four a
    /// second (40,000 timer wake-ups a second at 10,000 shards). At most a minute, at least 10 ms.
    func untilNextTimeout() -> Duration {
        .nanoseconds(watchdog.recheckAfter(activities.lazy.compactMap(\.call), now: MonotonicNanoseconds.now()))
    }

    /// After a crash, lanes still in a handler call within its time limit may complete offsets below the
    /// crash and are waited for; idle lanes and stuck ones (past the limit) are not.
    func noLaneMakingProgress(now: Int64) -> Bool {
        activities.allSatisfy { activity in activity.call.map { watchdog.isOverdue($0, now: now) } ?? true }
    }

    func crash(_ crash: ShardCrash) {
        let action = state.withLock { $0.crashed(crash) }
        crashed.store(true, ordering: .releasing)
        if action == .crashNow(crash) { logger.error("shard crashed", metadata: ["sluice.crash": "\(crash)"]) }
        for queue in queues { _ = queue.drain() }
        beacon.notify()
        control.notify()
    }
}
