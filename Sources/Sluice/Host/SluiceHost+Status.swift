import Foundation
import Logging
import Metrics
import ServiceLifecycle
import SluiceKafka
import Synchronization

/// This host's status as it publishes it to the control topic.
extension SluiceHost {
    /// What decides whether this host publishes its status: what it applied, each shard's state and pause reasons.
    func statusObserved(applied: Int64) -> StatusCadence.Said {
        let states = registry.states.mapValues(\.name)
        let consumer = state.withLock { $0.consumer }
        return StatusCadence.Said(
            applied: applied,
            shards: Dictionary(uniqueKeysWithValues: states.map { ($0.key.description, $0.value) }),
            reasons: Dictionary(
                uniqueKeysWithValues: states.keys.map { topicPartition in
                    (
                        topicPartition.description,
                        (consumer?.pauseReasons(for: topicPartition) ?? []).map(\.name).sorted()
                    )
                }))
    }

    /// This host's status record for what was observed, with its shards as the admin API shows them.
    func statusRecord(_ said: StatusCadence.Said, startedAt: Int64) -> ControlHostStatus {
        var details: [String: ControlHostStatus.Shard] = [:]
        for status in shards {
            let topicPartition = status.topicPartition
            var shard = ControlHostStatus.Shard()
            shard.pauseReasons = said.reasons[topicPartition.description] ?? []
            shard.lag = status.lag
            shard.committed = status.storedOffset ?? status.committedOffset
            shard.highWatermark = status.highWatermark
            shard.inFlight = status.inFlight
            shard.processed = status.processed
            shard.failed = status.failed
            shard.deadLettered = status.deadLettered
            shard.attempt = status.attempt
            shard.lastError = status.lastError.map { String($0.prefix(200)) }
            shard.nextProbeSeconds = status.nextProbeSeconds
            details[topicPartition.description] = shard
        }
        var status = ControlHostStatus(
            applied: said.applied, atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), shards: said.shards,
            details: details,
            startedAtMilliseconds: startedAt)
        (status.shardCrashes, status.shardRestarts) = shardCrashesAndRestarts
        return status
    }
}
