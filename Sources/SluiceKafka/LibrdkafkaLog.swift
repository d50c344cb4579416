import Crdkafka
import Logging

/// Forwards librdkafka's log events (enabled with `log.queue=true`) to swift-log.
enum LibrdkafkaLog {
    /// Logs a `RD_KAFKA_EVENT_LOG` event. librdkafka's syslog levels map to: 0-3 error, 4 warning,
    /// 5-6 debug (librdkafka's notices are routine), 7 trace.
    static func forward(_ event: OpaquePointer, to logger: Logger) {
        var facility: UnsafePointer<CChar>?
        var text: UnsafePointer<CChar>?
        var level: Int32 = 0
        guard rd_kafka_event_log(event, &facility, &text, &level) == 0 else { return }
        let logLevel: Logger.Level = level <= 3 ? .error : level == 4 ? .warning : level <= 6 ? .debug : .trace
        logger.log(
            level: logLevel,
            "librdkafka",
            metadata: [
                "librdkafka.facility": "\(facility.map { String(cString: $0) } ?? "")",
                "librdkafka.message": "\(text.map { String(cString: $0) } ?? "")",
            ]
        )
    }
}
