import Logging
import Sluice
import SluiceKafka

/// What an operator can change, shared by the admin API and the dashboard: with the control plane on, every
/// change goes to the group's control topic (and its audit topic); without it, to this host's overrides and
/// state file.
struct OperatorActions: Sendable {
    let host: SluiceHost
    let controlWriter: ControlPlaneWriter?
    let store: OperatorFlagStore?
    let logger: Logger

    /// A change that could not be made, with the HTTP status that says why.
    struct Refusal: Error {
        enum Kind { case notFound, conflict, unavailable, internalError }
        let kind: Kind
        let message: String
    }

    /// Sets (`enabled` or `rate`) or, with both nil, unsets a flag. Returns the control record's offset when
    /// the control plane took it.
    @discardableResult
    func setFlag(_ key: FlagKey, enabled: Bool?, rate: Double?, reason: String?, who: String) async throws(Refusal)
        -> Int64?
    {
        let unset = enabled == nil && rate == nil
        if let controlWriter {
            if unset, host.flags.flags[key]?.source != "control" {
                throw Refusal(kind: .notFound, message: "no control-plane flag is set for '\(key)'")
            }
            do {
                let offset = try await controlWriter.setFlag(
                    key, enabled: unset ? nil : (rate != nil ? true : enabled), reason: reason, who: who, rate: rate,
                    before: .some(host.control?.flag(key)))
                logger.notice(
                    unset ? "flag removed for the group by operator" : "flag set for the group by operator",
                    metadata: [
                        "sluice.flag": "\(key)", "sluice.flagEnabled": "\(enabled.map(String.init) ?? "-")",
                        "sluice.flagSource": "control",
                        "sluice.flagReason": "\(reason ?? "")", "sluice.caller": "\(who)", "kafka.offset": "\(offset)",
                    ])
                return offset
            } catch {
                throw Refusal(
                    kind: .unavailable, message: "the control topic could not be written; nothing changed: \(error)")
            }
        }
        if unset {
            guard host.operatorFlags.current[key] != nil else {
                throw Refusal(kind: .notFound, message: "no operator flag is set for '\(key)'")
            }
            host.operatorFlags.unset(key)
        } else {
            host.operatorFlags.set(key, enabled: rate != nil ? true : enabled ?? true, reason: reason, rate: rate)
        }
        if let store {
            do {
                try store.save(host.operatorFlags.current)
            } catch {
                logger.error("operator flags not persisted", metadata: ["error": "\(error)"])
                throw Refusal(
                    kind: .internalError, message: "the flag is in force but could not be persisted: \(error)")
            }
        }
        logger.notice(
            unset ? "flag override removed by operator" : "flag set by operator",
            metadata: [
                "sluice.flag": "\(key)", "sluice.flagEnabled": "\(enabled.map(String.init) ?? "-")",
                "sluice.flagSource": "admin",
                "sluice.flagReason": "\(reason ?? "")", "sluice.caller": "\(who)",
            ])
        return nil
    }

    /// Resets a shard's breaker (for the group, with the control plane); a quarantined message on it is
    /// released and tried again. Returns whether a quarantine was released and the control offset.
    func reset(_ topicPartition: TopicPartition, who: String) async throws(Refusal) -> (released: Bool, offset: Int64?)
    {
        var released = false
        if host.quarantines[topicPartition] != nil {
            do {
                try await host.releaseQuarantine(topicPartition, as: .retry, offset: nil, who: who, reason: nil)
                released = true
            } catch {
                throw Refusal(kind: .conflict, message: (error as? SluiceError)?.message ?? "\(error)")
            }
        }
        if let controlWriter {
            // For the group: whichever host owns the shard resets it.
            do {
                let offset = try await controlWriter.send(
                    ControlCommand(action: .reset, topicPartition: topicPartition, who: who))
                logger.notice(
                    "shard reset for the group by operator",
                    metadata: [
                        "kafka.partition": "\(topicPartition)", "sluice.caller": "\(who)", "kafka.offset": "\(offset)",
                    ])
                return (released, offset)
            } catch {
                throw Refusal(
                    kind: .unavailable, message: "the control topic could not be written; nothing changed: \(error)")
            }
        }
        guard await host.reset(topicPartition) || released else {
            throw Refusal(kind: .notFound, message: "shard \(topicPartition) is not on this host")
        }
        logger.notice(
            "shard reset by operator", metadata: ["kafka.partition": "\(topicPartition)", "sluice.caller": "\(who)"])
        return (released, nil)
    }

    /// Releases a quarantined message without a handler call: committed (`skip`) or dead-lettered.
    func release(
        _ topicPartition: TopicPartition, as release: Quarantine.Release, offset: Int64, who: String, reason: String?
    ) async throws(Refusal) {
        guard host.quarantines[topicPartition] != nil else {
            throw Refusal(kind: .notFound, message: "no quarantined message on \(topicPartition)")
        }
        do {
            try await host.releaseQuarantine(topicPartition, as: release, offset: offset, who: who, reason: reason)
        } catch {
            throw Refusal(kind: .conflict, message: (error as? SluiceError)?.message ?? "\(error)")
        }
    }
}
