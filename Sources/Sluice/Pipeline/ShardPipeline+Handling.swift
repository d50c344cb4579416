import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// One unit's handling: the handler call with its failure policy (retries, then stop, skip or dead-letter),
/// suspects one at a time, the watched dead-letter write, completion and crash.
extension ShardPipeline {
    func process(_ unit: ArraySlice<Message>, lane: Int, firstFailure: (any Error)? = nil) async {
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
    func processCarefully(_ unit: ArraySlice<Message>, lane: Int) async {
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

    func processUnit(_ unit: ArraySlice<Message>, lane: Int, firstFailure: (any Error)? = nil, careful: Bool = false) async {
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
                _ = await deadLetter(unit, error: failure, attempts: attempt, lane: lane)
            }
            return
        }
    }

    /// Writes `unit` to the dead-letter topic, watched like a handler call: a write that hangs (a missing topic,
    /// a broker away) crashes the shard after handlerTimeout instead of holding its lane. A batch goes out in one
    /// round trip. What was written is done even when another message of the batch was not: it counts (before
    /// the lane shows idle), so a restart does not write it a second time; the first message not written
    /// crashes the shard. Returns the messages counted as written, and whether all were.
    func deadLetter(_ unit: ArraySlice<Message>, error: any Error, attempts: Int, lane: Int) async -> (counted: Int, all: Bool) {
        guard let deadLetters, let topic = configuration.deadLetterTopic else {
            crash(ShardCrash(reason: .deadLetterFailed(String(describing: DeadLetterUnavailable())), offset: unit.first!.offset))
            return (0, false)
        }
        let started = MonotonicNanoseconds.now()
        activities[lane].begin(unit.first!.offset, timestamp: nil, at: started, handler: false)
        let outcomes = if let tracing {
            await tracing.tracedDeadLetter(unit, topic: topic) {
                await deadLetters.deadLetter(Array(unit), error: error, attempts: attempts, topic: topic)
            }
        } else {
            await deadLetters.deadLetter(Array(unit), error: error, attempts: attempts, topic: topic)
        }
        let inTime = MonotonicNanoseconds.now() - started <= handlerTimeoutNanoseconds
        let written = zip(unit, outcomes).filter { $0.1 == nil }.map(\.0)
        var counted = 0
        if inTime, !Task.isCancelled, !written.isEmpty {
            complete(written[...]) { $0.deadLettered += written.count }
            metrics.deadLettered.increment(by: written.count)
            counted = written.count
        }
        activities[lane].end()
        guard let (message, failure) = zip(unit, outcomes).first(where: { $0.1 != nil }) else { return (counted, true) }
        if inTime, !Task.isCancelled {
            crash(ShardCrash(reason: .deadLetterFailed(String(describing: failure!)), offset: message.offset))
        }
        return (counted, false)
    }

    struct DeadLetterUnavailable: Error, CustomStringConvertible {
        var description: String { "no dead-letter topic configured" }
    }

    func complete(_ unit: ArraySlice<Message>, count: (inout Counters) -> Void) {
        state.withLock { state in
            for message in unit { state.tracker.complete(message.offset) }
            count(&state.counters)
        }
        beacon.notify()
    }
}
