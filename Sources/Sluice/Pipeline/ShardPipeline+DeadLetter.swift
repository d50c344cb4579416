import Foundation
import SluiceKafka

/// The one way a pipeline writes to its topic's dead-letter topic: after a handler's failures (`onFailure:
/// deadLetter`) and for a quarantined message (`onCrash.then: deadLetter`, or an operator's release).
extension ShardPipeline {
    /// Writes `unit` to the dead-letter topic, watched like a handler call: a write that hangs (a missing topic,
    /// a broker away) crashes the shard after handlerTimeout instead of holding its lane. A batch goes out in one
    /// round trip. What was written is done even when another message of the batch was not: it counts (before
    /// the lane shows idle), so a restart does not write it a second time; the first message not written
    /// crashes the shard. Returns the messages counted as written, and whether all were.
    func deadLetter(_ unit: ArraySlice<Message>, error: any Error, attempts: Int, lane: Int) async -> (
        counted: Int, all: Bool
    ) {
        guard let deadLetters, let topic = configuration.deadLetterTopic else {
            crash(
                ShardCrash(
                    reason: .deadLetterFailed(String(describing: DeadLetterUnavailable())), offset: unit.first!.offset))
            return (0, false)
        }
        let started = MonotonicNanoseconds.now()
        activities[lane].begin(unit.first!.offset, timestamp: nil, at: started, handler: false)
        let outcomes =
            if let tracing {
                await tracing.tracedDeadLetter(unit, topic: topic) {
                    await deadLetters.deadLetter(Array(unit), error: error, attempts: attempts, topic: topic)
                }
            } else {
                await deadLetters.deadLetter(Array(unit), error: error, attempts: attempts, topic: topic)
            }
        let inTime = MonotonicNanoseconds.now() - started <= watchdog.timeoutNanoseconds
        let written = zip(unit, outcomes).filter { $0.1 == nil }.map(\.0)
        var counted = 0
        if inTime, !Task.isCancelled, !written.isEmpty {
            complete(written[...], as: .deadLettered)
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
}
