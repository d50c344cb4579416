import Logging
import Metrics
import ServiceLifecycle
import SluiceKafka

/// Writes shards' trips and their clearing to the group's control topic, in the order they happen, so a
/// partition's next owner starts it tripped. A write that fails is counted and logged; the trip holds on this
/// host either way.
struct TripPublisher: Service {
    let writer: ControlPlaneWriter
    let updates: AsyncStream<(TopicPartition, ControlRecord.Trip?)>
    let metricsFactory: any MetricsFactory
    let logger: Logger

    func run() async throws {
        for await (topicPartition, trip) in updates {
            do {
                try await writer.setTrip(topicPartition, trip)
            } catch {
                Counter(
                    label: "sluice_control_publish_errors_total", dimensions: [("record", "trip")],
                    factory: metricsFactory
                ).increment()
                logger.error(
                    "could not publish the shard's trip to the control topic; other hosts will not know of it",
                    metadata: ["kafka.partition": "\(topicPartition)", "error": "\(error)"])
            }
        }
    }
}
