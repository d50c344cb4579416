import Logging
import Metrics
import SluiceKafka

/// Shutdown: shards drained, then the consumer closed.
extension SupervisorLoop {
    mutating func beginShutdown(group: inout DiscardingTaskGroup) async {
        guard !shuttingDown else { return }
        shuttingDown = true
        logger.info("host shutting down: draining shards")
        for topicPartition in shards.keys.sorted() {
            await transition(topicPartition, group: &group) { $0.stop() }
        }
        let deadline = clock.now + configuration.shutdownTimeout
        group.addTask { [input, clock] in
            try? await clock.sleep(until: deadline)
            if !Task.isCancelled { input.yield(.shutdownDeadline) }
        }
    }

    mutating func startClose(group: inout DiscardingTaskGroup) {
        closing = true
        group.addTask { [consumer, producer, logger] in
            do {
                try await consumer.commitStored()
            } catch {
                logger.warning("final commit failed", metadata: ["kafka.error": "\(error)"])
            }
            await consumer.close()
            await producer?.close()
        }
    }
}
