import Logging
import Metrics
import SluiceKafka

/// Stalls: each tick's observation of a shard fed to its ``StallDetector``, and its actions carried out.
extension SupervisorLoop {
    /// How long a running, unpaused shard with messages waiting may have fetched nothing since its assignment
    /// before the consumer is asked to restart its fetcher.
    static let unstartedAfter = Duration.seconds(10)

    /// Feeds the shard's stall detector this tick's observation and carries out what it says.
    mutating func checkStall(_ status: ShardStatus, now: ContinuousClock.Instant) {
        let topicPartition = status.topicPartition
        guard var shard = shards[topicPartition] else { return }
        let observation = StallDetector<ContinuousClock.Instant>.Observation(
            progress: shard.pipeline.map { .init(pipeline: $0.generation, done: $0.progress) },
            expectedToProgress: shard.machine.state.isRunning && shard.desiredPauseReasons.isEmpty
                && (status.lag ?? 0) > 0,
            fetched: status.position != nil)
        switch shard.stall.observe(observation, now: now) {
        case .none:
            break
        case .cleared:
            shard.stalledGauge?.record(0)
            logger.info("shard no longer stalled", metadata: metadata(topicPartition))
            publish(topicPartition, ShardEvent.Kind.stallCleared)
        case .restartFetcher:
            logger.warning(
                "shard has messages waiting and its partition fetched nothing since it was assigned; asking the consumer to restart its fetcher",
                metadata: metadata(topicPartition, ["sluice.lag": "\(status.lag ?? 0)"]))
            consumer.restartFetcherIfUnstarted(topicPartition)
        case .stalled(let since):
            shard.stalledGauge?.record(1)
            logger.warning(
                "shard stalled: running and unpaused with messages waiting, but no progress",
                metadata: metadata(
                    topicPartition,
                    [
                        "sluice.lag": "\(status.lag ?? 0)", "sluice.stalledFor": "\(now - since)",
                        "sluice.pipeline": "\(shard.pipeline?.stallReport ?? "none")",
                    ]))
            publish(topicPartition, ShardEvent.Kind.stalled(since: since))
            consumer.reportStall(topicPartition)
        }
        shards[topicPartition] = shard
        registry.update(shard)
    }
}
