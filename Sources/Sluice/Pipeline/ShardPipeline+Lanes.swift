import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// The lanes: one message or one batch at a time from their queue to the handler, the fast path for one
/// message at a time, and completions into the watermark.
extension ShardPipeline {
    // MARK: Lanes

    func startLanes() -> [Task<Void, Never>] {
        let count = configuration.laneCount
        state.withLock { $0.lanesRunning = count }
        return (0..<count).map { index in
            let queue = queues[configuration.ordering == .none ? 0 : index]
            // An owned task, not a group child: see the type's documentation. On the handler threads, so a
            // handler that blocks its thread holds one of Sluice's threads, not one of Swift's few.
            let activity = activities[index]
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

    func runLane(_ index: Int, queue: WorkQueue<LaneRun>) async {
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
    nonisolated(nonsending) func processRun(_ run: LaneRun, lane: Int) async -> LaneRun {
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
    func flush(_ activity: LaneActivity) {
        let offsets = activity.completed.withLock { completed in
            defer { completed.removeAll(keepingCapacity: true) }
            return completed
        }
        completeOffsets(offsets)
    }

    func completeOffsets(_ offsets: [Int64]) {
        guard !offsets.isEmpty else { return }
        state.withLock { state in
            for offset in offsets { state.tracker.complete(offset) }
            state.counters.processed += offsets.count
        }
        metrics.processed.increment(by: offsets.count)
        beacon.notify()
    }
}
