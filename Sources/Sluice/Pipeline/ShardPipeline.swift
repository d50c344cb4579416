import Logging
import Tracing
import Metrics
import SluiceKafka
import Synchronization

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
        let handlerDuration: Timer

        init(topic: String) {
            let dimensions = [("topic", topic)]
            processed = Counter(label: "sluice_messages_processed_total", dimensions: dimensions)
            failed = Counter(label: "sluice_handler_failures_total", dimensions: dimensions)
            skipped = Counter(label: "sluice_messages_skipped_total", dimensions: dimensions)
            deadLettered = Counter(label: "sluice_messages_dead_lettered_total", dimensions: dimensions)
            handlerDuration = Timer(label: "sluice_handler_duration_seconds", dimensions: dimensions, preferredDisplayUnit: .seconds)
        }
    }

    /// Counters a shard reports.
    struct Counters: Sendable, Equatable {
        var processed = 0
        var failed = 0
        var skipped = 0
        var deadLettered = 0
    }

    private struct State {
        var tracker = OffsetTracker()
        var crash: ShardCrash?
        var stopRequested = false
        /// The first offset taken from the source, begun or not (a stop can drop the rest of a batch).
        var firstTaken: Int64?
        var redeliveriesSkipped = 0
        /// Offsets done before this pipeline (by an earlier one of the assignment, or by the group's last owner
        /// per its commit metadata): taken again, they are completed without a handler call.
        var alreadyDone: Set<Int64>
        var lanesRunning = 0
        var counters = Counters()
    }

    /// What a lane is doing, readable by the watchdog without the pipeline's lock.
    final class LaneActivity: Sendable {
        /// When the current handler call started (``MonotonicNanoseconds``); 0 while idle.
        let since = Atomic<Int64>(0)
        /// The first offset of the current call.
        let offset = Atomic<Int64>(-1)
        /// Offsets this lane completed that are not in the watermark yet (a lock only this lane and a
        /// final flush take).
        let completed = Mutex<[Int64]>([])
        /// The lane's crash journal slot: set before the lane starts, touched only by the lane after.
        nonisolated(unsafe) var journal: JournalSlot?
        /// What the lane waits on or does (``Phase``), for a stall report.
        let phase = Atomic<UInt8>(Phase.starting.rawValue)

        enum Phase: UInt8, CaseIterable {
            case starting, waitingForWork, processing, carefulGate, quarantineHold, deadLetter, backoff, ended
        }

        func enter(_ phase: Phase) { self.phase.store(phase.rawValue, ordering: .relaxed) }

        /// A handler call (or, with `handler: false`, Sluice's own work such as a dead-letter write) begins.
        func begin(_ offset: Int64, timestamp: Int64?, at nanoseconds: Int64, count: Int = 1, handler: Bool = true, careful: Bool = false) {
            if handler, let journal { journal.begin(offset, count: count, careful: careful, timestamp: timestamp) }
            self.offset.store(offset, ordering: .relaxed)
            since.store(max(1, nanoseconds), ordering: .releasing)
        }

        func end() {
            journal?.end()
            since.store(0, ordering: .releasing)
        }

        /// How long the current call has run (at `now`, ``MonotonicNanoseconds``), or nil while idle.
        func running(now: Int64) -> (Duration, Int64)? {
            let started = since.load(ordering: .acquiring)
            guard started != 0 else { return nil }
            return (.nanoseconds(now - started), offset.load(ordering: .relaxed))
        }
    }

    let topicPartition: TopicPartition
    let generation: UInt64
    private let configuration: TopicConfiguration
    /// `configuration.handlerTimeout` in nanoseconds, for the per-call check.
    private let handlerTimeoutNanoseconds: Int64
    private let handler: AnyHandler
    private let deadLetters: (any DeadLetterSink)?
    private let flowControl: any ShardFlowControl
    private let drainTimeout: Duration
    /// The clock `drainTimeout` runs on (the host's: tests drive a manual one). The handler watchdog stays on
    /// real time: it exists to notice real time passing.
    private let clock: any HostClock
    /// Real time, for what exists to notice real time passing: the handler watchdog, abandoned calls.
    private let watchdogClock: any HostClock
    /// How long the dispatcher waits for room under `maxInFlight` before it pauses the partition.
    private let backpressureGrace: Duration
    private let metrics: Metrics
    private let logger: Logger
    private let state: Mutex<State>
    private let activities: [LaneActivity]
    /// Mirrors `state.crash != nil` for the lanes' per-message checks.
    private let crashed = Atomic<Bool>(false)
    /// What the dispatcher waits on (``DispatcherPhase``), for a stall report.
    private let dispatcherPhase = Atomic<UInt8>(DispatcherPhase.predecessors.rawValue)

    enum DispatcherPhase: UInt8, CaseIterable {
        case predecessors, groupProgress, source, room, throttle, ended
    }
    /// Mirrors `state.stopRequested`: lanes start no new handler call once it is set.
    private let stopping = Atomic<Bool>(false)
    /// Notified when work completes or a lane ends: the dispatcher waiting for room under `maxInFlight`
    /// and the drain wait for it.
    private let beacon = Beacon()
    /// Notified only on a stop request or a crash: the watchdog waits on it (and rechecks on a timer), so
    /// completions, thousands a second, do not wake it.
    private let control = Beacon()
    /// Runs of messages for the lanes, in offset order within each queue.
    private let queues: [WorkQueue<LaneRun>]
    /// Offsets an earlier pipeline of this assignment finished above its watermark: taken again after a
    /// restart, they are completed without calling the handler a second time.
    /// Where lanes (and so handler code) run: the host's handler threads; nil for the default executor.
    private let laneExecutor: (any TaskExecutor)?
    /// Earlier pipelines of the shard whose abandoned handler calls may still run: this one hands out no
    /// message until they ended or `abandonTimeout` passed, so no message is in two calls at once.
    private let predecessors: [ShardPipeline]
    /// What the group's last commit says is done above it: skipped like `alreadyDone` once read.
    private let groupProgress: GroupProgress?
    /// The rate flag's limit, if any.
    private let rateLimit = Mutex<TokenBucket?>(nil)
    /// Where lanes note the message in their handler, so a trap is blamed on it after the restart.
    private let journal: CrashJournal?
    /// A message that killed the process before, and what it gets here.
    private let quarantine: Quarantine?
    /// The offsets ``quarantine`` covers (empty when there is none, or while its deaths are only counted).
    private let quarantined: Range<Int64>
    /// Set when the message at the quarantine's offset is not the one it recorded (the topic was deleted and
    /// recreated): the quarantine is set aside and its offsets are handled as usual.
    private let quarantineSetAside = Atomic<Bool>(false)
    /// Suspects of an unattributed death: handled one at a time, host-wide.
    private let suspects: Range<Int64>
    /// The host's gate that lets one suspect at a time into a handler call.
    private let carefulGate: CarefulGate
    /// Spans per handler call, when a tracer is bootstrapped (nil: tracing off, nothing per message).
    private let tracing: MessageTracing?
    /// The bytes this shard may have in flight now (its share of the host's memory budget, which changes
    /// with the assignment); nil: only `maxInFlight` bounds it.
    private let inFlightBytes: (@Sendable () -> Int?)?
    /// How long the first pipeline of an assignment waits for the group's progress before it hands out
    /// messages anyway (those are then handled at least once).
    static let groupProgressWait = Duration.seconds(5)

    init(
        topicPartition: TopicPartition,
        generation: UInt64,
        configuration: TopicConfiguration,
        handler: AnyHandler,
        deadLetters: (any DeadLetterSink)?,
        flowControl: any ShardFlowControl,
        drainTimeout: Duration,
        clock: any HostClock,
        watchdogClock: any HostClock,
        backpressureGrace: Duration = ShardPipeline.defaultBackpressureGrace,
        alreadyDone: Set<Int64> = [],
        metrics: Metrics? = nil,
        laneExecutor: (any TaskExecutor)? = nil,
        predecessors: [ShardPipeline] = [],
        groupProgress: GroupProgress? = nil,
        journal: CrashJournal? = nil,
        quarantine: Quarantine? = nil,
        carefulGate: CarefulGate,
        tracer: (any Tracer)? = MessageTracing.bootstrapped(),
        consumerGroup: String? = nil,
        inFlightBytes: (@Sendable () -> Int?)? = nil,
        logger: Logger
    ) {
        self.inFlightBytes = inFlightBytes
        self.tracing = tracer.map { MessageTracing(tracer: $0, topicPartition: topicPartition, group: consumerGroup) }
        self.journal = journal
        self.quarantine = quarantine
        self.carefulGate = carefulGate
        self.quarantined = quarantine.map { [.quarantined, .skip, .deadLetter].contains($0.state) ? $0.range : 0..<0 } ?? 0..<0
        self.suspects = quarantine.map { $0.state == .suspect ? $0.range : 0..<0 } ?? 0..<0
        self.predecessors = predecessors
        self.groupProgress = groupProgress
        self.laneExecutor = laneExecutor
        self.metrics = metrics ?? Metrics(topic: topicPartition.topic)
        self.topicPartition = topicPartition
        self.generation = generation
        self.configuration = configuration
        self.handler = handler
        self.deadLetters = deadLetters
        self.flowControl = flowControl
        self.drainTimeout = drainTimeout
        self.clock = clock
        self.watchdogClock = watchdogClock
        self.backpressureGrace = backpressureGrace
        var logger = logger
        logger[metadataKey: "kafka.topic"] = "\(topicPartition.topic)"
        logger[metadataKey: "kafka.partition"] = "\(topicPartition.partition)"
        logger[metadataKey: "sluice.generation"] = "\(generation)"
        self.logger = logger
        let lanes = configuration.laneCount
        self.state = Mutex(State(alreadyDone: alreadyDone))
        self.handlerTimeoutNanoseconds = configuration.handlerTimeout.nanoseconds
        self.activities = (0..<lanes).map { _ in LaneActivity() }
        self.queues = (0..<(configuration.ordering == .none ? 1 : lanes)).map { _ in WorkQueue(clock: clock) }
    }

    /// The offset to commit: everything before it is done. Nil before the first message.
    var watermark: Int64? { state.withLock { $0.tracker.watermark } }

    /// Where the next pipeline of the shard must read from: the watermark, or the first offset this one took
    /// from its source without beginning it; nil when it took nothing.
    var restartOffset: Int64? { state.withLock { $0.tracker.watermark ?? $0.firstTaken } }

    /// Offsets finished above the watermark (with `ordering: key` other keys run ahead of a failing one): the
    /// next pipeline after a restart does not hand them to the handler again.
    var completedAboveWatermark: Set<Int64> { state.withLock { $0.tracker.completedAboveWatermark } }

    /// Offsets done above the watermark, taken or not yet: what a commit's metadata carries to the next owner.
    var doneAboveWatermark: Set<Int64> {
        state.withLock { state in
            let watermark = state.tracker.watermark ?? Int64.min
            return state.tracker.completedAboveWatermark.union(state.alreadyDone.filter { $0 > watermark })
        }
    }

    /// Messages taken again after a restart and completed without a handler call (they were done before).
    var redeliveriesSkipped: Int { state.withLock { $0.redeliveriesSkipped } }

    /// Handler calls in progress. After ``run(source:)`` returned, these are calls it abandoned (past
    /// `handlerTimeout`, or past the drain timeout): Swift cannot stop them.
    var callsInProgress: Int {
        let now = MonotonicNanoseconds.now()
        return activities.reduce(0) { $0 + ($1.running(now: now) == nil ? 0 : 1) }
    }

    /// Messages taken from the partition and not yet done.
    var inFlight: Int { state.withLock { $0.tracker.inFlight } }

    /// What the pipeline waits on, for a stall report: the dispatcher's phase, how many lanes are in each
    /// phase, the lane queues' depth, what is in flight, and whether it was asked to stop or crashed.
    var stallReport: String {
        let (inFlight, lowest, stop, crash, lanesRunning) = state.withLock {
            ($0.tracker.inFlight, $0.tracker.watermark, $0.stopRequested, $0.crash != nil, $0.lanesRunning)
        }
        let dispatcher = DispatcherPhase(rawValue: dispatcherPhase.load(ordering: .relaxed)).map { "\($0)" } ?? "?"
        var lanes: [String: Int] = [:]
        for activity in activities {
            lanes[LaneActivity.Phase(rawValue: activity.phase.load(ordering: .relaxed)).map { "\($0)" } ?? "?", default: 0] += 1
        }
        let depths = queues.map(\.depth)
        return "dispatcher \(dispatcher); lanes \(lanes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) "
            + "(running \(lanesRunning)); queued \(depths.reduce(0) { $0 + $1.queued }), lanes waiting on queues \(depths.reduce(0) { $0 + $1.waiting }); "
            + "in flight \(inFlight) above watermark \(lowest.map(String.init) ?? "-"); progress \(progress); stop \(stop), crashed \(crash)"
    }

    /// When the oldest message taken and not done was produced (ms since the epoch), if known.
    var oldestPendingTimestamp: Int64? { state.withLock { $0.tracker.oldestPendingTimestamp } }

    /// A measure of progress that changes whenever a message is done (handled, skipped or dead-lettered).
    var progress: Int {
        state.withLock { $0.counters.processed + $0.counters.skipped + $0.counters.deadLettered }
    }

    /// Processed, failed, skipped and dead-lettered counts so far.
    var counters: Counters { state.withLock { $0.counters } }

    /// Stops at once: no message that is not in a handler call yet is started (queued ones are dropped,
    /// uncommitted, and read again by whoever handles the partition next); handler calls already running
    /// finish (up to the drain timeout), then ``run(source:)`` returns.
    func requestStop() {
        state.withLock { $0.stopRequested = true }
        stopping.store(true, ordering: .releasing)
        for queue in queues { _ = queue.drain() }
        beacon.notify()
        control.notify()
    }

    /// Whether lanes must not start another handler call.
    private var halted: Bool {
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
            if let done, !done.isEmpty { state.withLock { $0.alreadyDone.formUnion(done) } }
        }
        let lanes = startLanes()
        // Phase 1: dispatch until the source ends, a stop is requested or a lane crashes. The watchdog runs
        // beside the dispatcher, so a stuck handler is noticed even while the dispatcher waits for input.
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.dispatch(source) }
            group.addTask {
                _ = await self.control.waitUntil(recheckAfter: { self.untilNextTimeout() }, on: self.watchdogClock) { self.stopOrCrash() }
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
            finished = self.state.withLock { $0.lanesRunning == 0 || ($0.crash != nil && self.noLaneMakingProgress($0, now: now)) }
            return finished || self.clock.now >= deadline
        }
        clock.cancel(drainTimer)
        let (crash, stopRequested) = state.withLock { ($0.crash, $0.stopRequested) }
        if !finished || crash != nil {
            for lane in lanes { lane.cancel() }
        }
        // Completions a lane recorded but did not flush (it was stopped or is stuck in a later call).
        for activity in activities { flush(activity) }
        if let crash { return .crashed(crash) }
        if !finished {
            let (inFlight, watermark) = state.withLock { ($0.tracker.inFlight, $0.tracker.watermark ?? $0.firstTaken) }
            logger.warning(
                "drainTimeout passed with messages not done: they are not committed, and whoever reads the partition next handles them",
                metadata: ["sluice.notDone": "\(inFlight)", "sluice.drainTimeout": "\(drainTimeout)", "kafka.offset": "\(watermark.map(String.init) ?? "-")"])
        }
        if stopRequested { return .stopped(drainTimedOut: !finished) }
        return .sourceEnded(drainTimedOut: !finished)
    }

    /// Waits until the handler calls earlier pipelines abandoned ended, `abandonTimeout` passed, or a stop
    /// came. A call abandoned past `handlerTimeout` may still complete its message (its side effects,
    /// not its offset): handing the same message to a new call meanwhile would run it twice at once.
    private func waitForPredecessors() async {
        let abandoned = predecessors.reduce(0) { $0 + $1.callsInProgress }
        guard abandoned > 0 else { return }
        logger.warning(
            "waiting for handler calls the last pipeline abandoned before handing out messages",
            metadata: ["sluice.abandonedCalls": "\(abandoned)", "sluice.abandonTimeout": "\(configuration.abandonTimeout)"])
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

    private var watchdogInterval: Duration { min(configuration.handlerTimeout / 4, .milliseconds(250)) }

    /// True once a stop was requested or the pipeline crashed; crashes a shard whose handler is stuck.
    private func stopOrCrash() -> Bool {
        let now = MonotonicNanoseconds.now()
        let limit = configuration.handlerTimeout
        let stuck = activities.lazy.compactMap { $0.running(now: now) }.first { $0.0 > limit }
        let (stopped, timedOutOffset) = state.withLock { state -> (Bool, Int64?) in
            if state.crash == nil, let (_, offset) = stuck {
                state.crash = ShardCrash(reason: .handlerTimeout(limit), offset: offset)
                return (true, offset)
            }
            return (state.stopRequested || state.crash != nil, nil)
        }
        if timedOutOffset != nil { crashed.store(true, ordering: .releasing) }
        if let timedOutOffset {
            logger.error("handler timed out; crashing the shard", metadata: ["kafka.offset": "\(timedOutOffset)", "sluice.handlerTimeout": "\(limit)"])
        }
        return stopped
    }

    /// How long until the longest handler call running now reaches `handlerTimeout` (the whole timeout when
    /// none runs: a call that starts later reaches it later still). The watchdog sleeps that long, so it
    /// notices a timeout when it happens and an idle shard costs a wake-up per `handlerTimeout`, not four a
    /// second (40,000 timer wake-ups a second at 10,000 shards). At most a minute, at least 10 ms.
    private func untilNextTimeout() -> Duration {
        let now = MonotonicNanoseconds.now()
        let longest = activities.lazy.compactMap { $0.running(now: now)?.0 }.max() ?? .zero
        let left = configuration.handlerTimeout - longest
        return min(max(left, .milliseconds(10)), .seconds(60))
    }

    /// After a crash, lanes still in a handler call within its time limit may complete offsets below the
    /// crash and are waited for; idle lanes and stuck ones (past the limit) are not.
    private func noLaneMakingProgress(_ state: State, now: Int64) -> Bool {
        activities.allSatisfy { activity in activity.running(now: now).map { $0.0 > configuration.handlerTimeout } ?? true }
    }

    // MARK: Dispatch

    /// A running average of a message's memory footprint, from up to 8 messages of `batch`.
    static func averageFootprint(_ batch: [Message], previous: Int) -> Int {
        guard !batch.isEmpty else { return previous }
        let step = max(batch.count / 8, 1)
        var total = 0
        var sampled = 0
        for index in stride(from: 0, to: batch.count, by: step) {
            total += batch[index].memoryFootprint
            sampled += 1
        }
        let average = total / sampled
        return previous == 0 ? average : (previous * 3 + average) / 4
    }

    /// Hands lanes runs of messages rather than single ones (one lock and at most one wake-up per run),
    /// and never lets more than `maxInFlight` messages be in flight, nor more than the shard's in-flight
    /// byte share at the partition's average message size.
    private func dispatch<Source: AsyncSequence & Sendable>(_ source: Source) async
    where Source.Element == [Message], Source.Failure == Never {
        let countLimit = max(configuration.maxInFlight, 1)
        var limit = countLimit
        var averageBytes = 0
        var pausedForBackpressure = false
        dispatcherPhase.store(DispatcherPhase.source.rawValue, ordering: .relaxed)
        defer { dispatcherPhase.store(DispatcherPhase.ended.rawValue, ordering: .relaxed) }
        for await batch in source {
            if let inFlightBytes, let bytes = inFlightBytes() {
                averageBytes = Self.averageFootprint(batch, previous: averageBytes)
                limit = max(1, min(countLimit, bytes / max(averageBytes, 1)))
            }
            var remaining = batch[...]
            while !remaining.isEmpty {
                // One lock: note the first offset ever taken (a stop may drop the rest of this batch), and check.
                let first = remaining.first!.offset
                let halted = state.withLock { state in
                    if state.firstTaken == nil { state.firstTaken = first }
                    return state.stopRequested || state.crash != nil
                }
                if halted { return }
                if state.withLock({ $0.tracker.inFlight >= limit }) {
                    let roomOrEnd = { self.state.withLock { $0.tracker.inFlight <= limit / 2 || $0.stopRequested || $0.crash != nil } }
                    // A pause makes librdkafka drop what it prefetched and fetch it again on resume, so a short
                    // wait (a batch finishing) does not pause: the partition's own bounded buffer takes up the
                    // slack meanwhile, and pauses fetching itself when it fills.
                    dispatcherPhase.store(DispatcherPhase.room.rawValue, ordering: .relaxed)
                    defer { dispatcherPhase.store(DispatcherPhase.source.rawValue, ordering: .relaxed) }
                    var room = pausedForBackpressure
                        ? false : await beacon.waitUntil(deadline: clock.now + backpressureGrace, on: clock, roomOrEnd)
                    if !room {
                        if !pausedForBackpressure {
                            pausedForBackpressure = true
                            flowControl.setBackpressure(true, pipeline: generation)
                        }
                        room = await beacon.waitUntil(roomOrEnd)
                    }
                    if !room || state.withLock({ $0.stopRequested || $0.crash != nil }) { return }
                }
                if pausedForBackpressure, state.withLock({ $0.tracker.inFlight <= limit / 2 }) {
                    pausedForBackpressure = false
                    flowControl.setBackpressure(false, pipeline: generation)
                }
                // A rate flag: no more than the bucket allows (waiting for a token ends on a stop or a crash).
                dispatcherPhase.store(DispatcherPhase.throttle.rawValue, ordering: .relaxed)
                let allowed = await throttle(upTo: remaining.count)
                dispatcherPhase.store(DispatcherPhase.source.rawValue, ordering: .relaxed)
                if allowed == 0 { return }
                // Take as many as fit under the limit, and begin them in one lock.
                let (taken, rejected, rewound) = state.withLock { state -> (Int, [Int64], Bool) in
                    let room = min(max(limit - state.tracker.inFlight, 1), allowed)
                    let slice = remaining.prefix(room)
                    var rejected: [Int64] = []
                    for message in slice {
                        if !state.tracker.begin(message.offset, timestamp: message.timestampMilliseconds) {
                            rejected.append(message.offset)
                        } else if !state.alreadyDone.isEmpty, state.alreadyDone.contains(message.offset) {
                            // Done by an earlier pipeline of this assignment: complete it, do not hand it out.
                            state.tracker.complete(message.offset)
                            state.redeliveriesSkipped += 1
                            rejected.append(message.offset)
                        }
                    }
                    return (slice.count, rejected, !rejected.allSatisfy(state.alreadyDone.contains))
                }
                let range = remaining.startIndex..<(remaining.startIndex + taken)
                remaining = remaining.dropFirst(taken)
                if rejected.isEmpty {
                    // The common case: the lanes share the batch, no message is copied.
                    handOut(batch, range)
                } else {
                    if rewound {
                        logger.warning(
                            "partition rewound under the shard; skipping offsets it already took",
                            metadata: ["sluice.skipped": "\(rejected.count)"])
                    }
                    let skipped = Set(rejected)
                    let kept = batch[range].filter { !skipped.contains($0.offset) }
                    handOut(kept, kept.indices)
                }
            }
        }
    }

    /// Limits the shard to `rate` messages a second (a rate flag), or lifts the limit (nil). Takes effect at
    /// once, also while the dispatcher waits for a token.
    func setRate(_ rate: Double?) {
        rateLimit.withLock { $0 = rate.map { TokenBucket(rate: $0, now: clock.now) } }
        control.notify()
    }

    /// How many of `wanted` messages the rate limit lets out now, waiting for the first token if needed;
    /// 0 only when a stop or a crash came meanwhile.
    private func throttle(upTo wanted: Int) async -> Int {
        while true {
            // Without a rate flag (the common case) one lock and no clock read per slice.
            let (taken, nextAt, limited) = rateLimit.withLock { bucket -> (Int, ContinuousClock.Instant?, TokenBucket?) in
                guard bucket != nil else { return (wanted, nil, nil) }
                let (taken, nextAt) = bucket!.take(wanted, now: clock.now)
                return (taken, nextAt, bucket)
            }
            if taken > 0 { return taken }
            let stopped = await control.waitUntil(deadline: nextAt ?? clock.now, on: clock) {
                self.state.withLock { $0.stopRequested || $0.crash != nil } || self.rateLimit.withLock { $0?.rate } != limited?.rate
            }
            if stopped, state.withLock({ $0.stopRequested || $0.crash != nil }) { return 0 }
        }
    }

    /// Gives a run of begun messages (`batch[range]`) to the lanes: all to the one lane (`partition`), per
    /// key hash (`key`), or split evenly over the shared queue (`none`). The lanes share `batch`.
    private func handOut(_ batch: [Message], _ range: Range<Int>) {
        guard !range.isEmpty else { return }
        switch configuration.ordering {
        case .partition:
            queues[0].push(LaneRun(batch, range: range))
        case .key:
            guard queues.count > 1 else {
                queues[0].push(LaneRun(batch, range: range))
                return
            }
            // Each lane's positions sized once: appending to empty arrays reallocated each about log2(n / lanes) times.
            var lanes = [Int32](repeating: 0, count: range.count)
            var counts = [Int](repeating: 0, count: queues.count)
            for position in range {
                let lane = lane(for: batch[position])
                lanes[position - range.lowerBound] = Int32(lane)
                counts[lane] += 1
            }
            var perLane = counts.map { count -> [Int32] in
                var positions: [Int32] = []
                positions.reserveCapacity(count)
                return positions
            }
            for position in range { perLane[Int(lanes[position - range.lowerBound])].append(Int32(position)) }
            for (index, positions) in perLane.enumerated() where !positions.isEmpty {
                queues[index].push(LaneRun(batch, positions: positions))
            }
        case .none:
            let lanes = configuration.laneCount
            let size = max(1, (range.count + lanes - 1) / lanes)
            var start = range.lowerBound
            while start < range.upperBound {
                queues[0].push(LaneRun(batch, range: start..<min(start + size, range.upperBound)))
                start += size
            }
        }
    }

    private func lane(for message: Message) -> Int {
        guard configuration.ordering == .key, queues.count > 1, let key = message.key else { return 0 }
        // FNV-1a: stable across processes, unlike Hasher.
        let hash = key.withUnsafeBytes { bytes in
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in bytes {
                hash ^= UInt64(byte)
                hash &*= 0x0000_0100_0000_01B3
            }
            return hash
        }
        return Int(hash % UInt64(queues.count))
    }

    // MARK: Lanes

    private func startLanes() -> [Task<Void, Never>] {
        let count = configuration.laneCount
        state.withLock { $0.lanesRunning = count }
        return (0..<count).map { index in
            let queue = queues[configuration.ordering == .none ? 0 : index]
            // An owned task, not a group child: see the type's documentation. On the handler threads, so a
            // handler that blocks its thread holds one of Sluice's threads, not one of Swift's few.
            let activity = activities[index]
            activity.journal = journal?.acquire(topicPartition, generation: generation)
            return Task(executorPreference: laneExecutor) {
                activity.journal?.bindToCurrentTask()
                await self.runLane(index, queue: queue)
                activity.enter(.ended)
                if let slot = activity.journal { self.journal?.release(slot) }
                self.state.withLock { $0.lanesRunning -= 1 }
                self.beacon.notify()
            }
        }
    }

    /// How long a lane runs before it yields its thread to other lanes.
    static let laneSlice = Duration.milliseconds(20)

    private func runLane(_ index: Int, queue: WorkQueue<LaneRun>) async {
        var carry = LaneRun([])
        var sliceStart = ContinuousClock.now
        while true {
            // Handlers that never suspend would keep a lane on its thread as long as work is queued: give the
            // thread to other lanes now and then, so only a call that really holds it counts as blocking.
            let now = ContinuousClock.now
            if now - sliceStart > Self.laneSlice {
                await Task.yield()
                sliceStart = now
            }
            if carry.isEmpty {
                activities[index].enter(.waitingForWork)
                guard let run = await queue.next() else { return }
                carry = run
            }
            activities[index].enter(.processing)
            if halted { return }
            guard let batching = configuration.batch, batching.size > 1 else {
                carry = await processRun(carry, lane: index)
                continue
            }
            if carry.count >= batching.size {
                // A full batch in the run: handed on as a slice of the fetched batch (partition ordering).
                let unit = carry.prefix(batching.size).slice
                carry = carry.dropFirst(batching.size)
                await process(unit, lane: index)
                continue
            }
            var unit = Array(carry)
            carry = LaneRun([])
            let deadline = clock.now + batching.timeout
            while unit.count < batching.size {
                if carry.isEmpty {
                    guard let run = await queue.next(before: deadline) else { break }
                    carry = run
                }
                let more = carry.prefix(batching.size - unit.count)
                unit.append(contentsOf: more)
                carry = carry.dropFirst(more.count)
            }
            if halted { return }
            await process(unit[...], lane: index)
        }
    }

    /// The fast path for one message at a time: handles messages of a run while they succeed, records
    /// their completions in one lock at the end, and leaves a failing message to ``process(_:lane:)`` and its
    /// failure policy. Returns what is left of the run.
    private nonisolated(nonsending) func processRun(_ run: LaneRun, lane: Int) async -> LaneRun {
        var remaining = run
        let activity = activities[lane]
        defer { flush(activity) }
        guard case .message(let handler) = self.handler else {
            await process(remaining.prefix(1).slice, lane: lane)
            return remaining.dropFirst()
        }
        let context = ShardContext(topicPartition: topicPartition, generation: generation, attempt: 1, logger: logger)
        // One clock read per message: a call's end is the next call's start.
        let timeout = handlerTimeoutNanoseconds
        var callStarted = MonotonicNanoseconds.now()
        while let message = remaining.first {
            if halted { return LaneRun([]) }
            if isQuarantined(message.offset) || suspects.contains(message.offset) {
                flush(activity)
                await process(remaining.prefix(1).slice, lane: lane)
                return remaining.dropFirst()
            }
            activity.begin(message.offset, timestamp: message.timestampMilliseconds, at: callStarted)
            do {
                if let tracing {
                    try await tracing.traced([message], attempt: 1) { try await handler.handle(message, context: context) }
                } else {
                    try await handler.handle(message, context: context)
                }
            } catch {
                activity.end()
                // The slow path retries the same message with its failure policy.
                flush(activity)
                await process(remaining.prefix(1).slice, lane: lane, firstFailure: error)
                return remaining.dropFirst()
            }
            let callEnded = MonotonicNanoseconds.now()
            let tookTooLong = callEnded - callStarted > timeout
            metrics.handlerDuration.recordNanoseconds(callEnded - callStarted)
            callStarted = callEnded
            // A call that timed out was abandoned: its outcome does not count. One that finished in time
            // counts even after another lane crashed the shard: the work is done, and a restart skips it.
            // Recorded before the lane shows idle: a pipeline that ends once its lanes are idle flushes it.
            if Task.isCancelled || tookTooLong {
                activity.end()
                return LaneRun([])
            }
            let pending = activity.completed.withLock { completed in
                completed.append(message.offset)
                return completed.count
            }
            activity.end()
            if pending >= 64 { flush(activity) }
            remaining = remaining.dropFirst()
            if crashed.load(ordering: .acquiring) { return LaneRun([]) }
        }
        return remaining
    }

    /// Moves a lane's completed offsets into the watermark.
    private func flush(_ activity: LaneActivity) {
        let offsets = activity.completed.withLock { completed in
            defer { completed.removeAll(keepingCapacity: true) }
            return completed
        }
        completeOffsets(offsets)
    }

    private func completeOffsets(_ offsets: [Int64]) {
        guard !offsets.isEmpty else { return }
        state.withLock { state in
            for offset in offsets { state.tracker.complete(offset) }
            state.counters.processed += offsets.count
        }
        metrics.processed.increment(by: offsets.count)
        beacon.notify()
    }

    /// Whether `offset` is under the quarantine (and it was not set aside).
    private func isQuarantined(_ offset: Int64) -> Bool {
        quarantined.contains(offset) && !quarantineSetAside.load(ordering: .relaxed)
    }

    private func process(_ unit: ArraySlice<Message>, lane: Int, firstFailure: (any Error)? = nil) async {
        if !quarantined.isEmpty, unit.contains(where: { isQuarantined($0.offset) }) {
            await processQuarantined(unit, lane: lane)
            return
        }
        if !suspects.isEmpty, unit.contains(where: { suspects.contains($0.offset) }) {
            await processCarefully(unit, lane: lane)
            return
        }
        await processUnit(unit, lane: lane, firstFailure: firstFailure)
    }

    /// Suspects of an unattributed death one at a time, alone in the process (their journal slot says
    /// so): if one kills the process again, the next start knows it was that one.
    private func processCarefully(_ unit: ArraySlice<Message>, lane: Int) async {
        for message in unit {
            if crashed.load(ordering: .acquiring) || halted { return }
            guard suspects.contains(message.offset) else {
                await processUnit([message], lane: lane)
                continue
            }
            activities[lane].enter(.carefulGate)
            let acquired = await carefulGate.acquire(holdFor: configuration.handlerTimeout, giveUp: { self.halted })
            activities[lane].enter(.processing)
            guard let turn = acquired else { return }
            logger.notice("handling a suspect alone", metadata: ["kafka.offset": "\(message.offset)"])
            await processUnit([message], lane: lane, careful: true)
            carefulGate.release(turn)
        }
    }

    private func processUnit(_ unit: ArraySlice<Message>, lane: Int, firstFailure: (any Error)? = nil, careful: Bool = false) async {
        let policy = configuration.onFailure
        var attempt = 1
        var pendingFailure = firstFailure
        while true {
            // A retry is a new call: not after a stop. The first failure of a run is dealt with even then.
            if Task.isCancelled || crashed.load(ordering: .acquiring) || (pendingFailure == nil && halted) { return }
            let context = ShardContext(topicPartition: topicPartition, generation: generation, attempt: attempt, logger: logger)
            let callStarted = MonotonicNanoseconds.now()
            activities[lane].begin(unit.first!.offset, timestamp: unit.first!.timestampMilliseconds, at: callStarted, count: unit.count, careful: careful)
            let failure: (any Error)?
            if let earlier = pendingFailure {
                failure = earlier
                pendingFailure = nil
            } else {
                do {
                    if let tracing {
                        try await tracing.traced(unit, attempt: attempt) { try await handler.handle(unit, context: context) }
                    } else {
                        try await handler.handle(unit, context: context)
                    }
                    failure = nil
                } catch {
                    failure = error
                }
            }
            let took = MonotonicNanoseconds.now() - callStarted
            metrics.handlerDuration.recordNanoseconds(took)
            // A call that timed out was abandoned: its outcome does not count. One that succeeded in time counts
            // even after another lane crashed the shard (a restart skips it), recorded before the lane shows
            // idle (a pipeline that ends once its lanes are idle sees it); a failure then is not acted on.
            if Task.isCancelled || took > handlerTimeoutNanoseconds {
                activities[lane].end()
                return
            }
            guard let failure else {
                complete(unit) { $0.processed += unit.count }
                activities[lane].end()
                metrics.processed.increment(by: unit.count)
                return
            }
            activities[lane].end()
            if crashed.load(ordering: .acquiring) { return }
            state.withLock { $0.counters.failed += 1 }
            metrics.failed.increment()
            logger.warning(
                "handler failed",
                metadata: ["kafka.offset": "\(unit.first!.offset)", "sluice.attempt": "\(attempt)", "error": "\(failure)"])
            if attempt <= policy.retries {
                // The backoff ends early on a stop or a crash (nothing more is started then).
                activities[lane].enter(.backoff)
                _ = await control.waitUntil(deadline: clock.now + policy.backoff.delay(attempt: attempt), on: clock) { self.halted }
                activities[lane].enter(.processing)
                attempt += 1
                continue
            }
            switch policy.then {
            case .stop:
                crash(ShardCrash(reason: .handlerFailed(String(describing: failure)), offset: unit.first!.offset))
            case .skip:
                logger.error("message skipped after failures", metadata: ["kafka.offset": "\(unit.first!.offset)", "sluice.attempts": "\(attempt)"])
                complete(unit) { $0.skipped += unit.count }
                metrics.skipped.increment(by: unit.count)
            case .deadLetter:
                guard let deadLetters, let topic = configuration.deadLetterTopic else {
                    crash(ShardCrash(reason: .deadLetterFailed(String(describing: DeadLetterUnavailable())), offset: unit.first!.offset))
                    return
                }
                // Watched like a handler call: a write that hangs (a missing topic, a broker away) crashes
                // the shard after handlerTimeout instead of holding its lane. A batch goes out in one round trip.
                let started = MonotonicNanoseconds.now()
                activities[lane].begin(unit.first!.offset, timestamp: nil, at: started, handler: false)
                let outcomes = if let tracing {
                    await tracing.tracedDeadLetter(unit, topic: topic) {
                        await deadLetters.deadLetter(Array(unit), error: failure, attempts: attempt, topic: topic)
                    }
                } else {
                    await deadLetters.deadLetter(Array(unit), error: failure, attempts: attempt, topic: topic)
                }
                let inTime = MonotonicNanoseconds.now() - started <= handlerTimeoutNanoseconds
                // What was written is done even when another message of the batch was not: it counts (before
                // the lane shows idle), so a restart does not write it a second time.
                let written = zip(unit, outcomes).filter { $0.1 == nil }.map(\.0)
                if inTime, !Task.isCancelled, !written.isEmpty {
                    complete(written[...]) { $0.deadLettered += written.count }
                    metrics.deadLettered.increment(by: written.count)
                }
                activities[lane].end()
                if let (message, error) = zip(unit, outcomes).first(where: { $0.1 != nil }), inTime, !Task.isCancelled {
                    crash(ShardCrash(reason: .deadLetterFailed(String(describing: error!)), offset: message.offset))
                }
            }
            return
        }
    }

    /// A unit holding a quarantined message (docs/architecture.md §12): the messages before it are handled as usual;
    /// the quarantined ones are skipped (an operator released them), dead-lettered with their crash report,
    /// or hold the shard there (`onCrash.then: stop`); the rest of the unit waits behind them.
    private func processQuarantined(_ unit: ArraySlice<Message>, lane: Int) async {
        guard let quarantine, let index = unit.firstIndex(where: { quarantined.contains($0.offset) }) else { return }
        if index > unit.startIndex {
            await processUnit(unit[..<index], lane: lane)
            if crashed.load(ordering: .acquiring) || halted { return }
        }
        if unit[index].offset == quarantine.offset, !quarantine.isOfMessage(timestamp: unit[index].timestampMilliseconds) {
            quarantineSetAside.store(true, ordering: .relaxed)
            logger.warning(
                "the quarantine names another message than the one at its offset now (the topic was deleted and recreated?): set aside, the message is handled",
                metadata: [
                    "kafka.offset": "\(quarantine.offset)", "sluice.quarantine": "\(quarantine.summary)",
                    "sluice.recordedTimestamp": "\(quarantine.messageTimestamp.map(String.init) ?? "-")",
                    "kafka.timestamp": "\(unit[index].timestampMilliseconds.map(String.init) ?? "-")",
                ])
            await processUnit(unit[index...], lane: lane)
            return
        }
        let poisoned = unit[index...].prefix { quarantined.contains($0.offset) }
        let rest = unit[(index + poisoned.count)...]
        switch (quarantine.state, configuration.onCrash.then) {
        case (.counting, _), (.suspect, _):
            return
        case (.skip, _):
            logger.error(
                "quarantined message skipped, released by an operator",
                metadata: ["kafka.offset": "\(poisoned.first!.offset)", "sluice.quarantine": "\(quarantine.summary)",
                    "sluice.who": "\(quarantine.who ?? "-")", "sluice.reason": "\(quarantine.reason ?? "-")"])
            complete(poisoned) { $0.skipped += poisoned.count }
            metrics.skipped.increment(by: poisoned.count)
        case (.quarantined, .stop):
            // Held here, but only once everything before it is done: other lanes (ordering key or none) may
            // still have earlier messages, and a crash now would drop them until an operator acts.
            let held = poisoned.first!.offset
            activities[lane].enter(.quarantineHold)
            _ = await beacon.waitUntil { self.halted || (self.watermark ?? Int64.min) >= held }
            activities[lane].enter(.processing)
            crash(ShardCrash(reason: .quarantined(quarantine.summary), offset: held))
            return
        case (.quarantined, .deadLetter), (.deadLetter, _):
            guard let deadLetters, let topic = configuration.deadLetterTopic else {
                crash(ShardCrash(reason: .deadLetterFailed(String(describing: DeadLetterUnavailable())), offset: poisoned.first!.offset))
                return
            }
            let started = MonotonicNanoseconds.now()
            activities[lane].begin(poisoned.first!.offset, timestamp: nil, at: started, handler: false)
            let outcomes = await deadLetters.deadLetter(
                Array(poisoned), error: MessageKilledProcess(quarantine: quarantine), attempts: quarantine.crashes, topic: topic)
            let inTime = MonotonicNanoseconds.now() - started <= handlerTimeoutNanoseconds
            let written = zip(poisoned, outcomes).filter { $0.1 == nil }.map(\.0)
            if inTime, !Task.isCancelled, !written.isEmpty {
                complete(written[...]) { $0.deadLettered += written.count }
                metrics.deadLettered.increment(by: written.count)
                logger.error(
                    "quarantined message dead-lettered: it killed the process",
                    metadata: ["kafka.offset": "\(poisoned.first!.offset)", "sluice.quarantine": "\(quarantine.summary)",
                        "sluice.who": "\(quarantine.who ?? "-")", "sluice.reason": "\(quarantine.reason ?? "-")"])
            }
            activities[lane].end()
            if let (message, error) = zip(poisoned, outcomes).first(where: { $0.1 != nil }) {
                if inTime, !Task.isCancelled {
                    crash(ShardCrash(reason: .deadLetterFailed(String(describing: error!)), offset: message.offset))
                }
                return
            }
        }
        if !rest.isEmpty { await process(rest, lane: lane) }
    }

    private struct DeadLetterUnavailable: Error, CustomStringConvertible {
        var description: String { "no dead-letter topic configured" }
    }

    private func complete(_ unit: ArraySlice<Message>, count: (inout Counters) -> Void) {
        state.withLock { state in
            for message in unit { state.tracker.complete(message.offset) }
            count(&state.counters)
        }
        beacon.notify()
    }

    private func crash(_ crash: ShardCrash) {
        let first = state.withLock { state -> Bool in
            guard state.crash == nil else { return false }
            state.crash = crash
            return true
        }
        crashed.store(true, ordering: .releasing)
        if first { logger.error("shard crashed", metadata: ["sluice.crash": "\(crash)"]) }
        for queue in queues { _ = queue.drain() }
        beacon.notify()
        control.notify()
    }
}
