import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// The lanes: one message or one batch at a time from their queue to the handler, and the fast path for one
/// message at a time.
extension ShardPipeline {
    // MARK: Lanes

    func startLanes() -> [Task<Void, Never>] {
        let count = configuration.laneCount
        state.withLock { $0.lanesStarted(count) }
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
                _ = self.state.withLock { $0.laneEnded() }
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

    /// The fast path for one message at a time: calls the handler for the messages of a run while they
    /// succeed (their completions reach the watermark in groups) and leaves a failing message to the failure
    /// policy, a quarantined or suspect one to ``process(_:lane:)``. Returns what is left of the run.
    nonisolated(nonsending) func processRun(_ run: LaneRun, lane: Int) async -> LaneRun {
        var remaining = run
        let activity = activities[lane]
        defer { flush(activity) }
        let context = context(attempt: 1)
        let handler = self.handler  // read once a run, not copied out of the pipeline for each message
        var callStarted = MonotonicNanoseconds.now()
        while let message = remaining.first {
            if halted { return LaneRun([]) }
            if quarantineGate.holds(message.offset) {
                flush(activity)
                await process(remaining.prefix(1).slice, lane: lane)
                return remaining.dropFirst()
            }
            let (outcome, endedAt) = await call(
                message, by: handler, lane: lane, context: context, startedAt: callStarted)
            callStarted = endedAt
            switch outcome {
            case .succeeded:
                remaining = remaining.dropFirst()
                if crashed.load(ordering: .acquiring) { return LaneRun([]) }
            case .abandoned:
                return LaneRun([])
            case .failed(let failure):
                flush(activity)
                await recover(message, from: failure, lane: lane)
                return remaining.dropFirst()
            }
        }
        return remaining
    }
}
