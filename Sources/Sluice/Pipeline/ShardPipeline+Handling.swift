import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// One unit's handling off the fast path: the call with its failure policy (retries, then stop, skip or
/// dead-letter), suspects one at a time, and recording what is done.
extension ShardPipeline {
    func process(_ unit: ArraySlice<Message>, lane: Int) async {
        switch quarantineGate.route(unit) {
        case .quarantined: await processQuarantined(unit, lane: lane)
        case .suspects: await processCarefully(unit, lane: lane)
        case .usual: await processUnit(unit, lane: lane)
        }
    }

    /// Suspects of an unattributed death one at a time, alone in the process (their journal slot says
    /// so): if one kills the process again, the next start knows it was that one.
    func processCarefully(_ unit: ArraySlice<Message>, lane: Int) async {
        for message in unit {
            if crashed.load(ordering: .acquiring) || halted { return }
            guard quarantineGate.isSuspect(message.offset) else {
                await processUnit([message], lane: lane)
                continue
            }
            activities[lane].enter(.carefulGate)
            let carefulGate = quarantineGate.carefulGate
            let acquired = await carefulGate.acquire(holdFor: configuration.handlerTimeout, giveUp: { self.halted })
            activities[lane].enter(.processing)
            guard let turn = acquired else { return }
            logger.notice("handling a suspect alone", metadata: ["kafka.offset": "\(message.offset)"])
            await processUnit([message], lane: lane, careful: true)
            carefulGate.release(turn)
        }
    }

    /// One call for `unit`, then the failure policy if it failed.
    func processUnit(_ unit: ArraySlice<Message>, lane: Int, careful: Bool = false) async {
        if Task.isCancelled || crashed.load(ordering: .acquiring) || halted { return }
        let (outcome, _) = await call(
            unit, by: handler, lane: lane, context: context(attempt: 1), startedAt: MonotonicNanoseconds.now(),
            careful: careful)
        switch outcome {
        case .succeeded: flush(activities[lane])
        case .abandoned: return
        case .failed(let failure): await recover(unit, from: failure, lane: lane, careful: careful)
        }
    }

    /// After a failed first call of `input`: the topic's failure policy (``TopicConfiguration/FailurePolicy``),
    /// retries with backoff, then stop, skip, dead-letter or a retry topic. The first failure is dealt with even after a
    /// stop; a retry is a new call, not made after a stop or a crash.
    func recover(_ input: some HandlerCallInput, from firstFailure: any Error, lane: Int, careful: Bool = false) async {
        var failure = firstFailure
        var attempt = 1
        while true {
            if crashed.load(ordering: .acquiring) { return }
            state.withLock { $0.failedAttempt() }
            metrics.failed.increment()
            logger.warning(
                "handler failed",
                metadata: [
                    "kafka.offset": "\(input.firstPosition.offset)", "sluice.attempt": "\(attempt)",
                    "error": "\(failure)",
                ])
            switch configuration.onFailure.step(afterFailedAttempt: attempt, stage: configuration.retryStage) {
            case .retry(let delay):
                // The backoff ends early on a stop or a crash (nothing more is started then).
                activities[lane].enter(.backoff)
                _ = await control.waitUntil(deadline: clock.now + delay, on: clock) { self.halted }
                activities[lane].enter(.processing)
                attempt += 1
                if Task.isCancelled || crashed.load(ordering: .acquiring) || halted { return }
                let (outcome, _) = await call(
                    input, by: handler, lane: lane, context: context(attempt: attempt),
                    startedAt: MonotonicNanoseconds.now(),
                    careful: careful)
                switch outcome {
                case .succeeded:
                    flush(activities[lane])
                    return
                case .abandoned:
                    return
                case .failed(let next):
                    failure = next
                }
            case .stop:
                crash(
                    ShardCrash(reason: .handlerFailed(String(describing: failure)), offset: input.firstPosition.offset))
                return
            case .skip:
                let unit = input.messages
                logger.error(
                    "message skipped after failures",
                    metadata: ["kafka.offset": "\(input.firstPosition.offset)", "sluice.attempts": "\(attempt)"])
                complete(unit, as: .skipped)
                metrics.skipped.increment(by: unit.count)
                return
            case .deadLetter:
                _ = await deadLetter(input.messages, error: failure, attempts: attempt, lane: lane)
                return
            case .retryLater(let stage):
                _ = await park(input.messages, in: .retry(stage: stage), error: failure, attempts: attempt, lane: lane)
                return
            }
        }
    }

    func complete(_ unit: ArraySlice<Message>, as completion: StateMachine.Completion) {
        let watermark = state.withLock { state in
            state.completed(unit.lazy.map(\.offset), as: completion)
            return state.watermark
        }
        beacon.notify()
        noteProgress(watermark, done: journal == nil ? [] : unit.map(\.offset))
    }
}
