import ServiceLifecycle
import SluiceKafka

/// Refreshes what the shards' lag is computed from, beside the supervisor loop (it waits on the brokers): every
/// `interval`, the high watermarks of every shard (one round trip per leader; paused partitions do not fetch,
/// so their cached ones go stale) and the committed offsets of shards that stored none yet (with none
/// committed, where `auto.offset.reset` starts them). Runs until cancelled.
struct LagRefresher: Service {
    let registry: ShardRegistry
    let consumer: any ShardConsumer
    let clock: any HostClock
    let interval: Duration

    func run() async throws {
        while !Task.isCancelled {
            try? await clock.sleep(until: clock.now + interval)
            let (partitions, withoutStore) = registry.partitionsForLag
            guard !partitions.isEmpty else { continue }
            let highs = (try? await consumer.queryHighWatermarks(for: partitions, timeout: interval)) ?? [:]
            var committed =
                withoutStore.isEmpty
                ? [:] : (try? await consumer.committedOffsets(for: withoutStore, timeout: interval)) ?? [:]
            let neverCommitted = withoutStore.filter { committed[$0] == nil }
            if !neverCommitted.isEmpty,
                let starts = try? await consumer.queryResetOffsets(for: neverCommitted, timeout: interval)
            {
                committed.merge(starts) { current, _ in current }
            }
            registry.noteLag(highs: highs, committed: committed)
        }
    }
}
