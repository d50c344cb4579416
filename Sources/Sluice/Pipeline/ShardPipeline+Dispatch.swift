import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// The dispatcher: from the partition's batches to the lanes' queues, within `maxInFlight`, the in-flight
/// byte share and the rate flag.
extension ShardPipeline {
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
    func dispatch<Source: AsyncSequence & Sendable>(_ source: Source) async
    where Source.Element == [Message], Source.Failure == Never {
        let countLimit = max(configuration.maxInFlight, 1)
        var limit = countLimit
        var averageBytes = 0
        var watermarkTold = false
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
                let halted = state.withLock { $0.arrived(first: first) }
                if halted { return }
                if state.withLock({ $0.inFlight >= limit }) {
                    let roomOrEnd = {
                        self.state.withLock { $0.hasRoom(under: limit) || $0.halted }
                    }
                    // A pause makes librdkafka drop what it prefetched and fetch it again on resume, so a short
                    // wait (a batch finishing) does not pause: the partition's own bounded buffer takes up the
                    // slack meanwhile, and pauses fetching itself when it fills.
                    dispatcherPhase.store(DispatcherPhase.room.rawValue, ordering: .relaxed)
                    defer { dispatcherPhase.store(DispatcherPhase.source.rawValue, ordering: .relaxed) }
                    var room =
                        pausedForBackpressure
                        ? false : await beacon.waitUntil(deadline: clock.now + backpressureGrace, on: clock, roomOrEnd)
                    if !room {
                        if !pausedForBackpressure {
                            pausedForBackpressure = true
                            flowControl.setPaused(.backpressure, true, pipeline: generation)
                        }
                        room = await beacon.waitUntil(roomOrEnd)
                    }
                    if !room || state.withLock({ $0.halted }) { return }
                }
                if pausedForBackpressure, state.withLock({ $0.hasRoom(under: limit) }) {
                    pausedForBackpressure = false
                    flowControl.setPaused(.backpressure, false, pipeline: generation)
                }
                // A retry topic: only what is due (waiting for the head ends on a stop or a crash).
                var due = remaining.count
                if let stage = configuration.retryStage {
                    dispatcherPhase.store(DispatcherPhase.retryDue.rawValue, ordering: .relaxed)
                    due = await waitUntilDue(remaining, delay: stage.delay)
                    if due == 0 { return }
                }
                // A rate flag: no more than the bucket allows (waiting for a token ends on a stop or a crash).
                dispatcherPhase.store(DispatcherPhase.throttle.rawValue, ordering: .relaxed)
                let allowed = await throttle(upTo: due)
                dispatcherPhase.store(DispatcherPhase.source.rawValue, ordering: .relaxed)
                if allowed == 0 { return }
                // Take as many as fit under the limit, and begin them in one lock.
                let taken = state.withLock { $0.take(remaining, limit: limit, allowed: allowed) }
                let (rejected, rewound) = (taken.notHandedOut, taken.rewound)
                // The first messages taken give the pipeline a watermark (stored, so the shard shows its lag at
                // once); offsets done by an earlier pipeline were completed here: the watermark may have moved.
                if !rejected.isEmpty || !watermarkTold {
                    watermarkTold = true
                    noteProgress()
                }
                let range = remaining.startIndex..<(remaining.startIndex + taken.count)
                remaining = remaining.dropFirst(taken.count)
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
    func throttle(upTo wanted: Int) async -> Int {
        while true {
            // Without a rate flag (the common case) one lock and no clock read per slice.
            let (taken, nextAt, limited) = rateLimit.withLock {
                bucket -> (Int, ContinuousClock.Instant?, TokenBucket?) in
                guard bucket != nil else { return (wanted, nil, nil) }
                let (taken, nextAt) = bucket!.take(wanted, now: clock.now)
                return (taken, nextAt, bucket)
            }
            if taken > 0 { return taken }
            let stopped = await control.waitUntil(deadline: nextAt ?? clock.now, on: clock) {
                self.state.withLock { $0.halted }
                    || self.rateLimit.withLock { $0?.rate } != limited?.rate
            }
            if stopped, state.withLock({ $0.halted }) { return 0 }
        }
    }

    /// For a retry topic of `delay`: how many messages at the head of `messages` are due, once the first one is
    /// (0 only when a stop or a crash came first). Until then the partition is paused (`retryDelay`), so the
    /// retry partition holds nothing but what it fetched while other partitions go on.
    func waitUntilDue(_ messages: ArraySlice<Message>, delay: Duration) async -> Int {
        var paused = false
        var reported = false
        defer { if paused { flowControl.setPaused(.retryDelay, false, pipeline: generation) } }
        while true {
            let (wait, problem) = RetryHeaders.wait(for: messages.first!, delay: delay, now: clock.wallMilliseconds)
            if let problem, !reported {
                reported = true
                logger.warning(
                    "retry record without a usable due time; handled \(wait == .zero ? "now" : "after its delay from its timestamp")",
                    metadata: ["kafka.offset": "\(messages.first!.offset)", "reason": "\(problem)"])
                metrics.badRetryRecords.increment()
            }
            if wait == .zero { break }
            if !paused {
                paused = true
                flowControl.setPaused(.retryDelay, true, pipeline: generation)
            }
            _ = await control.waitUntil(deadline: clock.now + wait, on: clock) { self.state.withLock { $0.halted } }
            if state.withLock({ $0.halted }) { return 0 }
        }
        let now = clock.wallMilliseconds
        var due = 1
        for message in messages.dropFirst() {
            guard RetryHeaders.wait(for: message, delay: delay, now: now).wait == .zero else { break }
            due += 1
        }
        return due
    }

    /// Gives a run of begun messages (`batch[range]`) to the lanes' queues, as the router says.
    func handOut(_ batch: [Message], _ range: Range<Int>) {
        for (queue, run) in router.route(batch, range) { queues[queue].push(run) }
    }
}
