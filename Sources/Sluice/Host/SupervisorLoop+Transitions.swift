import Logging
import Metrics
import SluiceKafka

/// Acting on the state machine: one event through a shard's machine and its actions carried out, pause sets handed to the consumer once per input, events published.
extension SupervisorLoop {
    /// Runs one event through a shard's state machine and carries out the actions it returns.
    mutating func transition(
        _ topicPartition: TopicPartition,
        group: inout DiscardingTaskGroup,
        _ event: (inout ShardSupervisor.StateMachine<ContinuousClock.Instant>) ->
            ShardSupervisor.StateMachine<ContinuousClock.Instant>.Actions
    ) async {
        guard shards[topicPartition] != nil else { return }
        let wasTripped = shards[topicPartition]!.machine.state.isTripped
        defer { publishTripChange(topicPartition, wasTripped: wasTripped) }
        var pending = [event(&shards[topicPartition]!.machine)]
        while let actions = pending.popLast() {
            guard var shard = shards[topicPartition] else { return }
            if actions.commit {
                if let pipeline = shard.pipeline { registry.storeWatermark(pipeline, consumer: consumer) }
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
                    registry.countRestart()
                }
                if let seekFailure {
                    // Starting anyway would read from wherever librdkafka is, and the new watermark could
                    // commit past work the last pipeline dropped: the start fails, and the breaker counts it.
                    let reason = "seek before restart failed: \(seekFailure)"
                    logger.error(
                        "seek before restart failed",
                        metadata: metadata(topicPartition, ["kafka.error": "\(seekFailure)"]))
                    shard.lastError = reason
                    shard.crashes.increment()
                    registry.countCrash()
                    pending.append(
                        shard.machine.crashed(now: clock.now, reason: reason, jitter: Double.random(in: 0...1)))
                } else {
                    shard.pipeline = startPipeline(shard, group: &group)
                    shard.pipelinePauses = []
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
                registry.update(shard)
                for event in actions.events { publish(topicPartition, event) }
            }
        }
    }

    /// A shard that tripped, or left `tripped` other than by being released (reset, flag cycle, probe), is
    /// published for the group, so the next owner of the partition knows.
    func publishTripChange(_ topicPartition: TopicPartition, wasTripped: Bool) {
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
    mutating func reconcilePause(_ topicPartition: TopicPartition) {
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
            if let shard = shards[topicPartition], shown.insert(topicPartition).inserted { registry.update(shard) }
            for event in events { publish(topicPartition, event) }
        }
    }

    /// The current pipeline of a shard asked for its partition to be paused (back-pressure, a retry not due
    /// yet), or said the reason is gone.
    mutating func pipelinePause(
        _ topicPartition: TopicPartition, pipelineID: UInt64, _ reason: KafkaPauseReason, _ on: Bool
    ) {
        guard let pipeline = shards[topicPartition]?.pipeline, pipeline.generation == pipelineID else { return }
        if on {
            shards[topicPartition]!.pipelinePauses.insert(reason)
        } else {
            shards[topicPartition]!.pipelinePauses.remove(reason)
        }
        reconcilePause(topicPartition)
    }

    func publish(_ topicPartition: TopicPartition, _ event: ShardSupervisor.StateMachine<ContinuousClock.Instant>.Event)
    {
        let kind: ShardEvent.Kind
        switch event {
        case .started(let attempt, let probe):
            kind = .started(attempt: attempt, probe: probe)
            logger.info(
                probe ? "shard started (half-open probe)" : "shard started",
                metadata: metadata(topicPartition, ["sluice.attempt": "\(attempt)"]))
        case .stopped(let reason):
            kind = .stopped(reason)
            logger.info("shard stopped", metadata: metadata(topicPartition, ["sluice.reason": "\(reason.rawValue)"]))
        case .crashed(let reason, let attempt):
            kind = .crashed(reason: reason, attempt: attempt)
            logger.error(
                "shard crashed",
                metadata: metadata(topicPartition, ["sluice.attempt": "\(attempt)", "error": "\(reason)"]))
        case .backingOff(let until):
            kind = .backingOff(until: until)
            logger.warning(
                "shard backing off", metadata: metadata(topicPartition, ["sluice.restartIn": "\(until - clock.now)"]))
        case .tripped(let reason):
            kind = .tripped(reason: reason)
            logger.error(
                "shard tripped: stays down until a flag cycle, a reset or a probe",
                metadata: metadata(topicPartition, ["error": "\(reason)"]))
        case .reset:
            kind = .reset
        case .healthy:
            kind = .healthy
            logger.info("shard healthy again", metadata: metadata(topicPartition))
        }
        host.publish(ShardEvent(topicPartition: topicPartition, kind: kind))
    }

    func publish(_ topicPartition: TopicPartition, _ kind: ShardEvent.Kind) {
        host.publish(ShardEvent(topicPartition: topicPartition, kind: kind))
    }

    /// Counts shards by state for `sluice_shards{state}`: on every tick, and after other events at most every
    /// 100 ms (counting is a pass over every shard, and a rebalance or shutdown of thousands of shards is
    /// thousands of events).
    mutating func recordStateGauges(force: Bool) {
        let now = ContinuousClock.now
        guard force || now - lastStateGauges >= .milliseconds(100) else { return }
        lastStateGauges = now
        var counts: [String: Int] = [:]
        for shard in shards.values { counts[shard.state.name, default: 0] += 1 }
        for (name, gauge) in stateGauges { gauge.record(counts[name, default: 0]) }
    }

    func metadata(_ topicPartition: TopicPartition, _ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        var result = extra
        result["kafka.topic"] = "\(topicPartition.topic)"
        result["kafka.partition"] = "\(topicPartition.partition)"
        return result
    }
}
