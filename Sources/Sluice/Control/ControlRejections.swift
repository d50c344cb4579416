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

/// A control record (or another JSON document from outside the process) that is refused: which one, why, and
/// the class of reason it is counted under (`sluice_control_records_rejected_total{reason}`).
public struct ControlRecordRejected: Error, Sendable, CustomStringConvertible {
    /// The class of a rejection, the metric's `reason` label.
    public enum Reason: String, Sendable, CaseIterable {
        /// The key does not name anything this version knows how to read (`trip/orders` without a partition).
        case key
        /// The value is not a JSON object, or not in the schema version this host reads.
        case format
        /// A field is missing or of the wrong type.
        case field
        /// A field is outside the range a host could have written (a negative offset, a time before 1970).
        case range
        /// A release names offsets no host recorded as quarantined.
        case release
        /// The record is not signed, or not by a key that may write it.
        case signature
    }

    /// The record's key (at most 200 characters of it).
    public let key: String
    /// The record's offset in the control topic.
    public let offset: Int64
    /// The class of reason.
    public let reason: Reason
    /// What is wrong, naming the field.
    public let detail: String

    /// Creates a rejection.
    public init(key: String, offset: Int64, reason: Reason, detail: String) {
        self.key = String(key.prefix(200))
        self.offset = offset
        self.reason = reason
        self.detail = detail
    }

    public var description: String { "control record '\(key)' at offset \(offset): \(detail)" }
}
