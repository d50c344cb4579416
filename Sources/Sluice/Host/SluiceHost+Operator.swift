import Foundation
import Logging
import Metrics
import ServiceLifecycle
import SluiceKafka
import Synchronization

/// What operators do to a running host: reset a tripped shard, release a quarantined message.
extension SluiceHost {
    /// An operator reset of a shard: a tripped or backing-off shard starts now with a clean history.
    /// Returns false when this host does not have the shard.
    public func reset(_ topicPartition: TopicPartition) async -> Bool {
        guard let inputs = state.withLock({ $0.inputs }) else { return false }
        return await withCheckedContinuation { continuation in
            inputs.yield(.reset(topicPartition, continuation))
        }
    }

    /// Releases a quarantined message of `topicPartition` (docs/architecture.md §12), group-wide when the control plane
    /// is on: `skip` commits it without a handler call; otherwise its handler is tried again. The shard held
    /// at it, on whichever host owns it, starts again within a second.
    ///
    /// - Parameters:
    ///   - topicPartition: the partition whose quarantined message is released.
    ///   - release: `skip` commits the message without a handler call, `deadLetter` writes it to the topic's
    ///     dead-letter topic with its crash report, `retry` tries it again.
    ///   - offset: the offset the operator saw quarantined; refused when it is not the one.
    ///   - who: the operator, kept with the release.
    ///   - reason: why, kept with the release.
    /// - Returns: the record written: the skipped or dead-lettered quarantine, or nil when it is tried again.
    /// - Throws: ``SluiceError`` when there is no such quarantine, the offset differs, or it cannot be written.
    @discardableResult
    public func releaseQuarantine(
        _ topicPartition: TopicPartition, as release: Quarantine.Release, offset: Int64?, who: String?, reason: String?
    ) async throws -> Quarantine? {
        guard let containment = crashContainment else {
            throw SluiceError(
                code: .state,
                message: "the crash journal is off (host.crashJournal) or the host is not running: no quarantines")
        }
        guard let current = containment.quarantine(for: topicPartition) else {
            throw SluiceError(code: .state, message: "no quarantined message on \(topicPartition)")
        }
        if release == .deadLetter, configuration.topics[topicPartition.topic]?.deadLetterTopic == nil {
            throw SluiceError(
                code: .invalidInput,
                message: "topic '\(topicPartition.topic)' has no deadLetterTopic: skip the message, or configure one")
        }
        let released = try current.released(release, offset: offset, who: who, reason: reason, of: topicPartition)
        if let control {
            let writer = try configuration.controlWriter(logger: logger)
            let written = try await writer.setQuarantine(topicPartition, released, before: current, signer: .operator)
            await writer.close()
            _ = await control.waitUntilApplied(written, timeout: configuration.control.loadTimeout)
        } else {
            try containment.setLocal(topicPartition, released)
        }
        let what: Logger.Message =
            switch release {
            case .skip: "quarantined message skipped by an operator"
            case .deadLetter: "quarantined message released to the dead-letter topic by an operator"
            case .retry: "quarantine released by an operator; the handler tries the message again"
            }
        logger.notice(
            what,
            metadata: [
                "kafka.partition": "\(topicPartition)", "kafka.offset": "\(current.offset)",
                "sluice.who": "\(who ?? "-")", "sluice.reason": "\(reason ?? "-")",
            ])
        return released
    }
}
