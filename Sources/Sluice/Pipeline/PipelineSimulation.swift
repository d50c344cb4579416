import Logging
import SluiceKafka

/// One shard's pipeline run over a fixed list of messages, without Kafka: what `SluiceTesting` builds its
/// handler harness on (package access: not part of Sluice's public API).
package enum PipelineSimulation {
    /// How the run ended.
    package struct Result: Sendable {
        /// The pipeline crashed (the shard would stop and restart, or trip).
        package var crash: ShardCrash?
        /// What the host would commit: everything before it is done.
        package var committedOffset: Int64?
    }

    /// Runs `messages` (one partition, offset order) through a pipeline with `configuration`. The run ends when
    /// every message is dealt with: its drain, retry backoffs and batch timeouts are timed on `clock`, which a
    /// harness keeps still (with backoffs of zero), so a slow machine never cuts it short; a partial batch is
    /// handed on when the messages end. Handler calls still time out on real time, as in a host.
    package static func run(
        topicPartition: TopicPartition, configuration: TopicConfiguration, messageHandler: (any MessageHandler)?,
        batchHandler: (any BatchHandler)?, messages: [Message], deadLetters: (any DeadLetterSink)?,
        output: (any OutputSink)? = nil, clock: any HostClock,
        logger: Logger
    ) async -> Result {
        let handler: AnyHandler = messageHandler.map { .message($0) } ?? .batch(batchHandler!)
        let realTime = SystemHostClock(name: "sluice-simulation-timers")
        let pipeline = ShardPipeline(
            topicPartition: topicPartition, generation: 1, configuration: configuration, handler: handler,
            environment: .init(
                clock: clock, watchdogClock: realTime, flowControl: NoFlowControl(), deadLetters: deadLetters,
                output: output,
                drainTimeout: configuration.handlerTimeout, carefulGate: CarefulGate(clock: realTime), logger: logger))
        let source = AsyncStream<[Message]> { continuation in
            continuation.yield(messages)
            continuation.finish()
        }
        let outcome = await pipeline.run(source: source)
        if case .crashed(let crash) = outcome { return Result(crash: crash, committedOffset: pipeline.watermark) }
        return Result(crash: nil, committedOffset: pipeline.watermark)
    }

    private struct NoFlowControl: ShardFlowControl {
        func setPaused(_ reason: KafkaPauseReason, _ on: Bool, pipeline: UInt64) {}
    }
}
