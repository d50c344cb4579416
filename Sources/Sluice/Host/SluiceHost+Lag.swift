import Logging
import Metrics
import ServiceLifecycle
import SluiceKafka
import Synchronization
import Tracing

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Lag: the high watermarks and committed offsets the shards' lag is computed from, refreshed beside the loop.
extension SluiceHost {
    /// Runs until cancelled: every `lagRefreshInterval`, asks the brokers for the high watermarks of every
    /// shard (one round trip per leader; paused partitions do not fetch, so their cached ones go stale), and
    /// for the committed offsets of shards that stored none yet. Outside the supervisor loop: it waits on I/O.
    func refreshLag(consumer: any ShardConsumer) async {
        while !Task.isCancelled {
            try? await clock.sleep(until: clock.now + configuration.lagRefreshInterval)
            let (partitions, withoutStore) = registry.partitionsForLag
            guard !partitions.isEmpty else { continue }
            let highs =
                (try? await consumer.queryHighWatermarks(for: partitions, timeout: configuration.lagRefreshInterval))
                ?? [:]
            var committed =
                withoutStore.isEmpty
                ? [:]
                : (try? await consumer.committedOffsets(for: withoutStore, timeout: configuration.lagRefreshInterval))
                    ?? [:]
            // With nothing committed, a shard starts where auto.offset.reset points.
            let neverCommitted = withoutStore.filter { committed[$0] == nil }
            if !neverCommitted.isEmpty,
                let starts = try? await consumer.queryResetOffsets(
                    for: neverCommitted, timeout: configuration.lagRefreshInterval)
            {
                committed.merge(starts) { current, _ in current }
            }
            registry.noteLag(highs: highs, committed: committed)
        }
    }
}
