import Metrics
import SluiceKafka

/// One shard under supervision: its state machine, its current pipeline, and its metric handles. Owned
/// by the host's supervisor loop and touched only there.
struct ShardSupervisor {
    let topicPartition: TopicPartition
    var machine: StateMachine<ContinuousClock.Instant>
    let messages: ShardMessages
    var pipeline: ShardPipeline?
    /// The first offset the pipelines of this assignment took and did not finish: where a restart seeks to.
    /// Nil while no pipeline took anything (the partition's buffer is intact, a restart reads on).
    var restartOffset: Int64?
    /// Offsets the pipelines of this assignment finished above `restartOffset`: the next one skips them.
    var doneAboveRestart: Set<Int64> = []
    /// Whether a pipeline has run in this assignment; before that the partition's messages are untouched
    /// and a start needs no seek.
    var hasRun = false
    /// What the group's last commit says is done above the committed offset (read in the background).
    let groupProgress = GroupProgress()
    /// Ended pipelines of this assignment with handler calls still running (abandoned: Swift cannot stop
    /// them). The next pipeline waits for them; too many trip the shard.
    var abandoned: [ShardPipeline] = []
    /// Abandoned handler calls still running.
    var abandonedCalls: Int { abandoned.reduce(0) { $0 + $1.callsInProgress } }
    var flag: FlagSetting
    /// Why the current pipeline asked for its partition to be paused (back-pressure, a retry not due yet);
    /// empty between pipelines.
    var pipelinePauses: Set<KafkaPauseReason> = []
    /// Whether the shard is stalled (running, unpaused, with lag, and no progress).
    var stall: StallDetector<ContinuousClock.Instant>
    /// Since when the shard is reported stalled.
    var stalledSince: ContinuousClock.Instant? { stall.stalledSince }
    let stalledGauge: Gauge?
    let lagSecondsGauge: Gauge?
    /// The pause set last handed to the consumer (nil before the first).
    var appliedPauseReasons: Set<KafkaPauseReason>?
    var lastError: String?
    /// The quarantine (offset) the shard is held tripped at, until it is released or skipped.
    var heldByQuarantine: Int64?
    /// Identifies the armed timer; a firing with an older token is ignored.
    var timerToken: UInt64 = 0
    let crashes: Counter
    let restarts: Counter
    let attemptGauge: Gauge?
    let lagGauge: Gauge?
    let flagGauge: Gauge?
    let pipelineMetrics: ShardPipeline.Metrics

    init(
        topicPartition: TopicPartition, policy: BreakerPolicy, flag: FlagSetting, messages: ShardMessages,
        now: ContinuousClock.Instant,
        stallAfter: Duration, unstartedAfter: Duration, perPartitionMetrics: Bool = true,
        metricsFactory factory: any MetricsFactory = MetricsSystem.factory
    ) {
        self.stall = StallDetector(stallAfter: stallAfter, unstartedAfter: unstartedAfter, now: now)
        self.topicPartition = topicPartition
        self.machine = StateMachine(policy: policy, flagOn: flag.enabled)
        self.messages = messages
        self.flag = flag
        let topic = [("topic", topicPartition.topic)]
        crashes = Counter(label: "sluice_shard_crashes_total", dimensions: topic, factory: factory)
        restarts = Counter(label: "sluice_shard_restarts_total", dimensions: topic, factory: factory)
        let shard = topic + [("partition", String(topicPartition.partition))]
        // Per-partition series multiply by partitions: off with `metrics.perPartition: off` (topic totals stay).
        attemptGauge =
            perPartitionMetrics ? Gauge(label: "sluice_shard_attempt", dimensions: shard, factory: factory) : nil
        lagGauge = perPartitionMetrics ? Gauge(label: "sluice_shard_lag", dimensions: shard, factory: factory) : nil
        flagGauge =
            perPartitionMetrics ? Gauge(label: "sluice_shard_flag_enabled", dimensions: shard, factory: factory) : nil
        stalledGauge =
            perPartitionMetrics ? Gauge(label: "sluice_shard_stalled", dimensions: shard, factory: factory) : nil
        lagSecondsGauge =
            perPartitionMetrics ? Gauge(label: "sluice_shard_lag_seconds", dimensions: shard, factory: factory) : nil
        flagGauge?.record(flag.enabled ? 1 : 0)
        pipelineMetrics = ShardPipeline.Metrics(topic: topicPartition.topic, factory: factory)
    }

    /// Removes the shard's per-partition series (attempt, lag, lag seconds, flag, stalled): a host that no
    /// longer owns the partition must not go on reporting its last values.
    func destroyMetrics() {
        for gauge in [attemptGauge, lagGauge, flagGauge, stalledGauge, lagSecondsGauge] { gauge?.destroy() }
    }

    /// The whole set of reasons the partition must be paused for now: the state's, plus what the running
    /// pipeline asks for.
    var desiredPauseReasons: Set<KafkaPauseReason> {
        pipeline == nil ? machine.pauseReasons : machine.pauseReasons.union(pipelinePauses)
    }

    /// The public view of the machine's state.
    var state: ShardState {
        switch machine.state {
        case .created, .starting: .starting
        case .running: .running
        case .draining: .draining
        case .off: .off
        case .backingOff(let attempt, let until): .backingOff(attempt: attempt, until: until)
        case .tripped(let since, let reason, _): .tripped(since: since, reason: reason)
        case .stopped: .stopped
        }
    }
}
