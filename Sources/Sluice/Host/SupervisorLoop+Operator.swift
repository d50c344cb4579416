import Logging
import Metrics
import SluiceKafka

/// What operators and flags ask of shards: control-topic commands, quarantine releases, flag changes.
extension SupervisorLoop {
    /// Operator commands from the control topic for shards this host owns, in order, once each.
    mutating func carryOutCommands(group: inout DiscardingTaskGroup) async {
        guard let control else { return }
        for (offset, command) in control.commands(from: commandPosition) {
            commandPosition = offset + 1
            guard shards[command.topicPartition] != nil else { continue }
            switch command.action {
            case .reset:
                logger.info(
                    "operator reset through the control plane",
                    metadata: metadata(
                        command.topicPartition,
                        ["sluice.who": "\(command.who ?? "-")", "sluice.controlOffset": "\(offset)"]))
                let now = clock.now
                await transition(command.topicPartition, group: &group) { $0.reset(now: now) }
            }
        }
    }

    // MARK: Quarantine

    /// Shards held at a quarantined message start again once it is released or skipped (the control plane
    /// or the state directory says so), looked at every tick.
    mutating func releaseQuarantineHolds(group: inout DiscardingTaskGroup) async {
        guard let containment = crashContainment else { return }
        let quarantines = containment.quarantines
        // Suspects handled past without a death are cleared.
        clearingSuspects = clearingSuspects.filter { quarantines[$0]?.state == .suspect }
        for (topicPartition, suspect) in quarantines.sorted(by: { $0.key < $1.key }) where suspect.state == .suspect {
            guard let shard = shards[topicPartition] else { continue }
            guard !clearingSuspects.contains(topicPartition), let watermark = shard.pipeline?.watermark,
                watermark >= suspect.range.upperBound
            else { continue }
            clearingSuspects.insert(topicPartition)
            group.addTask { [configuration, logger] in
                await containment.clearSuspect(topicPartition, configuration: configuration, logger: logger)
            }
        }
        for (topicPartition, shard) in shards.filter({ $0.value.heldByQuarantine != nil }).sorted(by: {
            $0.key < $1.key
        }) {
            guard let offset = shard.heldByQuarantine else { continue }
            guard shard.machine.state.isTripped else {
                shards[topicPartition]?.heldByQuarantine = nil
                continue
            }
            let quarantine = quarantines[topicPartition]
            guard quarantine == nil || quarantine!.state != .quarantined || quarantine!.offset != offset else {
                continue
            }
            shards[topicPartition]?.heldByQuarantine = nil
            logger.info(
                "quarantine \(quarantine.map { $0.state == .skip ? "skipped" : $0.state == .deadLetter ? "released to the dead-letter topic" : "released" } ?? "released"); the shard starts again",
                metadata: metadata(
                    topicPartition, ["kafka.offset": "\(offset)", "sluice.who": "\(quarantine?.who ?? "-")"]))
            let now = clock.now
            await transition(topicPartition, group: &group) { $0.reset(now: now) }
        }
    }

    // MARK: Flags

    mutating func flagsChanged(group: inout DiscardingTaskGroup) async {
        for topicPartition in shards.keys.sorted() {
            guard var shard = shards[topicPartition] else { continue }
            let setting = flags.setting(for: topicPartition)
            guard setting != shard.flag else { continue }
            let changed = setting.enabled != shard.flag.enabled
            if setting.rate != shard.flag.rate {
                shard.pipeline?.setRate(setting.rate)
                logger.info(
                    "shard rate changed",
                    metadata: metadata(
                        topicPartition,
                        ["sluice.rate": "\(setting.rate.map(ControlRecord.describeRate) ?? "unlimited")"]))
            }
            shard.flag = setting
            shards[topicPartition] = shard
            registry.update(shard)
            shard.flagGauge?.record(setting.enabled ? 1 : 0)
            guard changed else { continue }
            logger.info(
                "flag changed",
                metadata: metadata(
                    topicPartition,
                    [
                        "sluice.flag": "\(setting.enabled ? "on" : "off")", "sluice.flagSource": "\(setting.source)",
                        "sluice.flagReason": "\(setting.reason ?? "")",
                    ]))
            publish(
                topicPartition, .flagChanged(enabled: setting.enabled, source: setting.source, reason: setting.reason))
            await transition(topicPartition, group: &group) { $0.flagChanged(on: setting.enabled) }
        }
    }
}
