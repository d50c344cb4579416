import SluiceKafka

/// Tells the supervisor loop a pipeline's back-pressure state; the loop folds it into the shard's desired
/// pause set (for as long as that pipeline is the shard's current one).
struct SupervisorFlowControl: ShardFlowControl {
    let input: AsyncStream<SluiceHost.Input>.Continuation
    let topicPartition: TopicPartition

    func setPaused(_ reason: KafkaPauseReason, _ on: Bool, pipeline: UInt64) {
        input.yield(.pipelinePause(topicPartition, pipeline: pipeline, reason, on))
    }
}
