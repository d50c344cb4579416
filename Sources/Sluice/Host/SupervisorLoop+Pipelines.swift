import Logging
import Metrics
import SluiceKafka

/// Pipelines: started for a shard, and what their end means for it (restart point, abandoned calls, crash or drain).
extension SupervisorLoop {
    mutating func pipelineEnded(
        _ topicPartition: TopicPartition, pipelineID: UInt64, outcome: ShardPipeline.Outcome,
        group: inout DiscardingTaskGroup
    ) async {
        guard var shard = shards[topicPartition], let pipeline = shard.pipeline, pipeline.generation == pipelineID
        else { return }
        shard.restartOffset = pipeline.restartOffset ?? shard.restartOffset
        // What finished above the restart point is not handled again by the next pipeline.
        let restartFrom = shard.restartOffset ?? 0
        shard.doneAboveRestart = shard.doneAboveRestart.union(pipeline.doneAboveWatermark).filter { $0 >= restartFrom }
        shard.pipeline = nil
        shard.pipelinePauses = []
        shard.abandoned = (shard.abandoned + [pipeline]).filter { $0.callsInProgress > 0 }
        let abandonedCalls = shard.abandonedCalls
        let limit = (configuration.topics[topicPartition.topic] ?? TopicConfiguration()).maxAbandonedCalls
        var crashReason: String?
        var quarantined = false
        if case .crashed(let crash) = outcome {
            crashReason = crash.description
            if case .quarantined = crash.reason {
                // Held at the message until an operator skips it or resets the shard, whatever the breaker says.
                quarantined = true
                shard.heldByQuarantine = crash.offset
            }
            if abandonedCalls > limit {
                crashReason! +=
                    "; \(abandonedCalls) abandoned handler calls still running (maxAbandonedCalls \(limit)): tripped"
            }
            shard.lastError = crashReason
        }
        if abandonedCalls > 0 {
            logger.warning(
                "handler calls abandoned: Swift cannot stop them; the shard hands out no message they may still complete",
                metadata: metadata(
                    topicPartition,
                    ["sluice.abandonedCalls": "\(abandonedCalls)", "sluice.maxAbandonedCalls": "\(limit)"]))
        }
        shards[topicPartition] = shard
        registry.update(shard)
        switch outcome {
        case .crashed:
            shard.crashes.increment()
            registry.countCrash()
            let now = clock.now
            let reason = crashReason ?? ""
            await transition(topicPartition, group: &group) {
                $0.crashed(
                    now: now, reason: reason, jitter: Double.random(in: 0...1),
                    trip: quarantined || abandonedCalls > limit)
            }
        case .stopped, .sourceEnded:
            await transition(topicPartition, group: &group) { $0.drained() }
        }
    }

    func startPipeline(_ shard: ShardSupervisor, group: inout DiscardingTaskGroup) -> ShardPipeline {
        let topicPartition = shard.topicPartition
        let inFlightBytes: (@Sendable () -> Int?)? = (shard.messages as? KafkaPartitionMessages).map { messages in
            { @Sendable in messages.bufferByteShare.map { $0 / SluiceConfiguration.bufferToInFlightRatio } }
        }
        let settings = configuration.topics[topicPartition.topic] ?? TopicConfiguration()
        // Exactly once: what an earlier pipeline or owner did and did not commit in a transaction has no output in
        // Kafka, so it is handled again (nothing is skipped as done).
        let exactlyOnce = settings.output == .exactlyOnce
        let transaction = exactlyOnce ? self.exactlyOnce?.transactions.make(for: topicPartition) : nil
        let pipeline = ShardPipeline(
            topicPartition: topicPartition, generation: registry.nextPipelineID(), configuration: settings,
            handler: handlers[topicPartition.topic]!, alreadyDone: exactlyOnce ? [] : shard.doneAboveRestart,
            predecessors: shard.abandoned.filter { $0.callsInProgress > 0 },
            groupProgress: exactlyOnce ? nil : shard.groupProgress,
            quarantine: crashContainment?.quarantine(for: topicPartition), metrics: shard.pipelineMetrics,
            environment: .init(
                clock: clock, watchdogClock: watchdogClock,
                flowControl: SupervisorFlowControl(input: input, topicPartition: topicPartition),
                deadLetters: transaction.map {
                    TransactionalDeadLetterSink(transaction: $0, instrument: self.exactlyOnce?.instrument)
                } ?? deadLetters,
                output: exactlyOnce ? self.exactlyOnce?.sink : output, transaction: transaction,
                drainTimeout: configuration.drainTimeout,
                laneExecutor: handlerExecutor,
                journal: crashContainment?.journal, carefulGate: carefulGate, tracer: tracer,
                consumerGroup: configuration.kafka.group, inFlightBytes: inFlightBytes,
                onProgress: { [registry] in registry.progressed($0) }, logger: logger))
        if let rate = shard.flag.rate { pipeline.setRate(rate) }
        let messages = shard.messages
        registry.pipelineStarted(pipeline)
        group.addTask { [registry, consumer, input] in
            // The host stores the watermark as it advances (one task for every pipeline), and the last one here.
            let outcome = await pipeline.run(source: messages)
            registry.pipelineEnded(pipeline, consumer: consumer)
            input.yield(.pipelineEnded(topicPartition, pipeline: pipeline.generation, outcome))
        }
        return pipeline
    }
}
