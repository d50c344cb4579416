import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// Quarantined messages (docs/architecture.md §12): skipped, dead-lettered or held, per the quarantine and
/// `onCrash.then`.
extension ShardPipeline {
    /// A unit holding a quarantined message (docs/architecture.md §12): the messages before it are handled as usual;
    /// the quarantined ones are skipped (an operator released them), dead-lettered with their crash report,
    /// or hold the shard there (`onCrash.then: stop`); the rest of the unit waits behind them.
    func processQuarantined(_ unit: ArraySlice<Message>, lane: Int) async {
        let quarantined = quarantineGate.quarantined
        guard let quarantine = quarantineGate.quarantine,
            let index = unit.firstIndex(where: { quarantined.contains($0.offset) })
        else { return }
        if index > unit.startIndex {
            await processUnit(unit[..<index], lane: lane)
            if crashed.load(ordering: .acquiring) || halted { return }
        }
        if quarantineGate.setAsideIfNotItsMessage(unit[index]) {
            logger.warning(
                "the quarantine names another message than the one at its offset now (the topic was deleted and recreated?): set aside, the message is handled",
                metadata: [
                    "kafka.offset": "\(quarantine.offset)", "sluice.quarantine": "\(quarantine.summary)",
                    "sluice.recordedTimestamp": "\(quarantine.messageTimestamp.map(String.init) ?? "-")",
                    "kafka.timestamp": "\(unit[index].timestampMilliseconds.map(String.init) ?? "-")",
                ])
            await processUnit(unit[index...], lane: lane)
            return
        }
        let poisoned = unit[index...].prefix { quarantined.contains($0.offset) }
        let rest = unit[(index + poisoned.count)...]
        switch (quarantine.state, configuration.onCrash.then) {
        case (.counting, _), (.suspect, _):
            return
        case (.skip, _):
            logger.error(
                "quarantined message skipped, released by an operator",
                metadata: [
                    "kafka.offset": "\(poisoned.first!.offset)", "sluice.quarantine": "\(quarantine.summary)",
                    "sluice.who": "\(quarantine.who ?? "-")", "sluice.reason": "\(quarantine.reason ?? "-")",
                ])
            complete(poisoned, as: .skipped)
            metrics.skipped.increment(by: poisoned.count)
        case (.quarantined, .stop):
            // Held here, but only once everything before it is done: other lanes (ordering key or none) may
            // still have earlier messages, and a crash now would drop them until an operator acts.
            let held = poisoned.first!.offset
            activities[lane].enter(.quarantineHold)
            _ = await beacon.waitUntil { self.halted || (self.watermark ?? Int64.min) >= held }
            activities[lane].enter(.processing)
            crash(ShardCrash(reason: .quarantined(quarantine.summary), offset: held))
            return
        case (.quarantined, .deadLetter), (.deadLetter, _):
            let (counted, all) = await deadLetter(
                poisoned, error: MessageKilledProcess(quarantine: quarantine), attempts: quarantine.crashes, lane: lane)
            if counted > 0 {
                logger.error(
                    "quarantined message dead-lettered: it killed the process",
                    metadata: [
                        "kafka.offset": "\(poisoned.first!.offset)", "sluice.quarantine": "\(quarantine.summary)",
                        "sluice.who": "\(quarantine.who ?? "-")", "sluice.reason": "\(quarantine.reason ?? "-")",
                    ])
            }
            if !all { return }
        }
        if !rest.isEmpty { await process(rest, lane: lane) }
    }
}
