import Foundation
import SluiceKafka

/// The one way a pipeline writes messages away from its partition: to its topic's dead-letter topic after a
/// handler's failures (`onFailure: deadLetter`, or after the last retry topic) and for a quarantined message
/// (`onCrash.then: deadLetter`, or an operator's release), and to a retry topic (`onFailure: retryLater`).
extension ShardPipeline {
    /// Where ``park(_:in:error:attempts:lane:)`` writes.
    enum Parking: Equatable {
        /// The dead-letter topic.
        case deadLetter
        /// The retry topic of delay `stage` (0 for the first).
        case retry(stage: Int)
    }

    /// Writes `unit` to the dead-letter topic; see ``park(_:in:error:attempts:lane:)``.
    func deadLetter(_ unit: ArraySlice<Message>, error: any Error, attempts: Int, lane: Int) async -> (
        counted: Int, all: Bool
    ) {
        await park(unit, in: .deadLetter, error: error, attempts: attempts, lane: lane)
    }

    /// Writes `unit` to `parking`, watched like a handler call: a write that hangs (a missing topic, a broker
    /// away) crashes the shard after handlerTimeout instead of holding its lane. A batch goes out in one round
    /// trip. What was written is done even when another message of the batch was not: it counts (before the
    /// lane shows idle), so a restart does not write it a second time; the first message not written crashes
    /// the shard. Returns the messages counted as written, and whether all were.
    func park(_ unit: ArraySlice<Message>, in parking: Parking, error: any Error, attempts: Int, lane: Int) async -> (
        counted: Int, all: Bool
    ) {
        guard let deadLetters, let topic = topic(of: parking) else {
            crash(
                ShardCrash(
                    reason: .deadLetterFailed(String(describing: DeadLetterUnavailable())), offset: unit.first!.offset))
            return (0, false)
        }
        let records: [Message]
        switch parking {
        case .deadLetter:
            records = unit.map(RetryHeaders.withoutLastWrite)
        case .retry(let stage):
            let due = clock.wallMilliseconds + configuration.onFailure.delays[stage].milliseconds
            records = unit.map { RetryHeaders.stamped($0, error: error, stage: stage, dueAt: due) }
        }
        let started = MonotonicNanoseconds.now()
        activities[lane].begin(unit.first!.offset, timestamp: nil, at: started, handler: false)
        let outcomes =
            if let tracing {
                await tracing.tracedDeadLetter(unit, topic: topic) {
                    await deadLetters.deadLetter(records, error: error, attempts: attempts, topic: topic)
                }
            } else {
                await deadLetters.deadLetter(records, error: error, attempts: attempts, topic: topic)
            }
        let inTime = MonotonicNanoseconds.now() - started <= watchdog.timeoutNanoseconds
        let written = zip(unit, outcomes).filter { $0.1 == nil }.map(\.0)
        var counted = 0
        if inTime, !Task.isCancelled, !written.isEmpty {
            switch parking {
            case .deadLetter:
                complete(written[...], as: .deadLettered)
                metrics.deadLettered.increment(by: written.count)
            case .retry:
                complete(written[...], as: .retriedLater)
                metrics.retriedLater.increment(by: written.count)
            }
            counted = written.count
        }
        activities[lane].end()
        guard let (message, failure) = zip(unit, outcomes).first(where: { $0.1 != nil }) else { return (counted, true) }
        if inTime, !Task.isCancelled {
            crash(ShardCrash(reason: .deadLetterFailed(String(describing: failure!)), offset: message.offset))
        }
        return (counted, false)
    }

    /// The topic `parking` names for this pipeline's topic; nil when it has none.
    func topic(of parking: Parking) -> String? {
        switch parking {
        case .deadLetter:
            return configuration.deadLetterTopic
        case .retry(let stage):
            let delays = configuration.onFailure.delays
            guard delays.indices.contains(stage) else { return nil }
            return TopicConfiguration.retryTopic(
                of: configuration.retryStage?.topic ?? topicPartition.topic, delay: delays[stage])
        }
    }

    struct DeadLetterUnavailable: Error, CustomStringConvertible {
        var description: String { "no dead-letter topic configured" }
    }
}
