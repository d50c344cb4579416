import Foundation
import Logging
import Metrics
import ServiceLifecycle
import SluiceKafka
import Synchronization

/// Stored offsets: each running pipeline's watermark, with the offsets done above it, as it advances.
extension SluiceHost {
    /// A pipeline started: its watermark is stored as it advances.
    func pipelineStarted(_ pipeline: ShardPipeline) {
        runningPipelines.withLock { $0[pipeline.generation] = (pipeline, nil) }
    }

    /// A pipeline ended: its last watermark is stored, and no more.
    func pipelineEnded(_ pipeline: ShardPipeline, consumer: any ShardConsumer) {
        runningPipelines.withLock { _ = $0.removeValue(forKey: pipeline.generation) }
        storeWatermark(pipeline, consumer: consumer)
    }

    /// Stores the watermark of every running pipeline that made progress since it was last stored. A pipeline
    /// the shard's view does not name yet (its start is shown once its pause set is applied) is looked at again
    /// next time: its progress counts as stored only once it was.
    func storeWatermarks(consumer: any ShardConsumer) {
        let due = runningPipelines.withLock { pipelines in
            pipelines.values.compactMap { entry -> (ShardPipeline, (progress: Int, watermark: Int64?))? in
                // Completions move the progress; offsets skipped as done by an earlier pipeline move only the watermark.
                let now = (progress: entry.pipeline.progress, watermark: entry.pipeline.watermark)
                if let last = entry.storedAt, last.progress == now.progress, last.watermark == now.watermark { return nil }
                return (entry.pipeline, now)
            }
        }
        for (pipeline, seen) in due where storeWatermark(pipeline, consumer: consumer) {
            runningPipelines.withLock { $0[pipeline.generation]?.storedAt = seen }
        }
    }

    /// Stores the pipeline's watermark if it advanced and the pipeline is its shard's current one. Returns false
    /// when the shard's view does not name the pipeline (not yet, or no more).
    @discardableResult
    func storeWatermark(_ pipeline: ShardPipeline, consumer: any ShardConsumer) -> Bool {
        guard let watermark = pipeline.watermark else { return true }
        let topicPartition = pipeline.topicPartition
        // With the offsets done above it, so whoever reads on from the watermark skips them; stored again when
        // either changes (with one key stuck, the watermark stays while the others finish).
        let metadata = CommitMetadata.encode(done: pipeline.doneAboveWatermark, above: watermark)
        enum Decision { case store, unchanged, notCurrent }
        let decision = state.withLock { state -> Decision in
            guard var view = state.views[topicPartition], view.pipeline === pipeline else { return .notCurrent }
            guard view.status.storedOffset != watermark || view.storedMetadata != metadata else { return .unchanged }
            view.status.storedOffset = watermark
            view.storedMetadata = metadata
            state.views[topicPartition] = view
            return .store
        }
        switch decision {
        case .notCurrent: return false
        case .unchanged: return true
        case .store: break
        }
        do {
            try consumer.storeOffsets([TopicPartitionOffset(topicPartition, offset: watermark, metadata: metadata)])
        } catch {
            logger.debug("offset not stored", metadata: ["kafka.partition": "\(topicPartition)", "kafka.error": "\(error)"])
        }
        return true
    }
}
