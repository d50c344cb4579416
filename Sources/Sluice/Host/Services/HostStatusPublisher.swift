import Logging
import Metrics
import ServiceLifecycle

/// Publishes this host's status (`host/IDENTITY` in the control topic) on the ``StatusCadence``: what it applied,
/// its shards with their states, pause reasons, lag and counts. Looks every 100 ms; a failed write is counted,
/// logged once per failing streak and tried again at the next look.
struct HostStatusPublisher: Service {
    let identity: String
    let writer: ControlPlaneWriter
    /// What decides whether to publish, read every look (cheap).
    let observe: @Sendable () -> StatusCadence.Said
    /// The record to write for what was observed (the shards as the admin API shows them), built only to write.
    let record: @Sendable (StatusCadence.Said) -> ControlHostStatus
    /// Real time.
    let clock: any HostClock
    let metricsFactory: any MetricsFactory
    let logger: Logger

    func run() async throws {
        var cadence = StatusCadence()
        var failing = false
        let failures = Counter(
            label: "sluice_control_publish_errors_total", dimensions: [("record", "host")], factory: metricsFactory)
        while !Task.isCancelled {
            let current = observe()
            if cadence.due(current, now: clock.now) {
                do {
                    try await writer.setHost(identity, record(current))
                    cadence.published(current, at: clock.now)
                    if failing { logger.notice("this host's status is published to the control topic again") }
                    failing = false
                } catch {
                    failures.increment()
                    if !failing {
                        logger.warning(
                            "could not publish this host's status to the control topic; writers will not count it as applied",
                            metadata: ["error": "\(error)"])
                    }
                    failing = true
                }
            }
            try? await clock.sleep(until: clock.now + .milliseconds(100))
        }
    }
}
