import Foundation
import Logging
import OrderTracing
import ServiceLifecycle
import Sluice

/// A Sluice service with tracing: every handled order is a span, continuing the producer's trace when the
/// message carries a `traceparent` header.
///
/// ```sh
/// swift run TracedOrders ../OrderService/sluice.yaml http://localhost:4318/v1/traces
/// ```
@main
enum TracedOrders {
    static func main() async throws {
        let arguments = CommandLine.arguments.dropFirst()
        guard arguments.count == 2, let config = arguments.first, let endpoint = arguments.last else {
            FileHandle.standardError.write(Data("usage: TracedOrders CONFIG.yaml OTLP_TRACES_URL\n".utf8))
            exit(64)
        }
        let logger = Logger(label: "traced-orders")
        let tracing = try OrderTracing.bootstrap(serviceName: "traced-orders", endpoint: endpoint)
        let host = SluiceHost(configuration: try await SluiceConfiguration.load(file: config), logger: logger)
        host.register("orders", OrderLogger(logger: logger))
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: host), .init(service: tracing)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }
}

/// Logs each order; the log line carries the span's trace id when a logging metadata provider reads it.
struct OrderLogger: MessageHandler {
    let logger: Logger

    func handle(_ message: Message, context: ShardContext) async throws {
        logger.info("order", metadata: ["offset": "\(message.offset)", "partition": "\(message.partition)"])
    }
}
