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

    /// Stores the watermark of every running pipeline that made progress since it was last stored.
    func storeWatermarks(consumer: any ShardConsumer) {
        let due = runningPipelines.withLock { pipelines in
            var due: [ShardPipeline] = []
            for (generation, entry) in pipelines {
                // Completions move the progress; offsets skipped as done by an earlier pipeline move only the watermark.
                let now = (progress: entry.pipeline.progress, watermark: entry.pipeline.watermark)
                if let last = entry.storedAt, last.progress == now.progress, last.watermark == now.watermark { continue }
                pipelines[generation]?.storedAt = now
                due.append(entry.pipeline)
            }
            return due
        }
        for pipeline in due { storeWatermark(pipeline, consumer: consumer) }
    }

    /// Stores the pipeline's watermark if it advanced and the pipeline is still its shard's current one.
    func storeWatermark(_ pipeline: ShardPipeline, consumer: any ShardConsumer) {
        guard let watermark = pipeline.watermark else { return }
        let topicPartition = pipeline.topicPartition
        // With the offsets done above it, so whoever reads on from the watermark skips them; stored again when
        // either changes (with one key stuck, the watermark stays while the others finish).
        let metadata = CommitMetadata.encode(done: pipeline.doneAboveWatermark, above: watermark)
        let store = state.withLock { state -> Bool in
            guard var view = state.views[topicPartition], view.pipeline === pipeline,
                view.status.storedOffset != watermark || view.storedMetadata != metadata
            else { return false }
            view.status.storedOffset = watermark
            view.storedMetadata = metadata
            state.views[topicPartition] = view
            return true
        }
        guard store else { return }
        do {
            try consumer.storeOffsets([TopicPartitionOffset(topicPartition, offset: watermark, metadata: metadata)])
        } catch {
            logger.debug("offset not stored", metadata: ["kafka.partition": "\(topicPartition)", "kafka.error": "\(error)"])
        }
    }
}
