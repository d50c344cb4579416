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
        var details: [String: ShardReport] = [:]
        let now = ContinuousClock.now
        for status in shards {
            var report = ShardReport(status, now: now).forHostRecord
            report.pauseReasons = said.reasons[status.topicPartition.description] ?? []
            details[status.topicPartition.description] = report
        }
        var status = ControlHostStatus(
            applied: said.applied, atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), shards: said.shards,
            details: details,
            startedAtMilliseconds: startedAt)
        (status.shardCrashes, status.shardRestarts) = shardCrashesAndRestarts
        return status
    }
}
