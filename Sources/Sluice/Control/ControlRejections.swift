import Logging
import Metrics
import Synchronization

/// The control records a host refused: each logged once with its key, offset and reason, counted as
/// `sluice_control_records_rejected_total{reason}`, and the latest kept for the dashboard and status.
final class ControlRejections: Sendable {
    private let topic: String
    private let logger: Logger
    private let counters: [ControlRecordRejected.Reason: Counter]
    private let state = Mutex<(count: Int, latest: [ControlRecordRejected])>((0, []))
    /// How many of the latest rejections are kept.
    static let kept = 20

    init(topic: String, metricsFactory: any MetricsFactory, logger: Logger) {
        self.topic = topic
        self.logger = logger
        counters = Dictionary(
            uniqueKeysWithValues: ControlRecordRejected.Reason.allCases.map {
                (
                    $0,
                    Counter(
                        label: "sluice_control_records_rejected_total", dimensions: [("reason", $0.rawValue)],
                        factory: metricsFactory)
                )
            })
    }

    func record(_ rejected: ControlRecordRejected) {
        counters[rejected.reason]?.increment()
        state.withLock { state in
            state.count += 1
            state.latest.append(rejected)
            if state.latest.count > Self.kept { state.latest.removeFirst(state.latest.count - Self.kept) }
        }
        logger.error(
            "control record rejected; what it would change keeps its last good state",
            metadata: [
                "kafka.topic": "\(topic)", "kafka.offset": "\(rejected.offset)", "sluice.key": "\(rejected.key)",
                "sluice.reason": "\(rejected.reason.rawValue)", "error": "\(rejected.detail)",
            ])
    }

    var snapshot: (count: Int, latest: [ControlRecordRejected]) { state.withLock { $0 } }
}
