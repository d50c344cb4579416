import Logging
import OTel
import ServiceLifecycle
import Sluice
import Tracing

/// Bootstraps an OpenTelemetry tracer for a Sluice service.
///
/// Sluice starts a `process TOPIC` span for every handler call as soon as a tracer is bootstrapped; with
/// OpenTelemetry's W3C propagator, a message whose producer wrote a `traceparent` header continues the
/// producer's trace. Run the returned service in the same `ServiceGroup` as the `SluiceHost`: it exports
/// spans in the background and flushes the last ones on a graceful shutdown.
///
/// Only tracing is bootstrapped here (logs and metrics stay with the service's own swift-log and
/// Prometheus setup). The OpenTelemetry environment variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// `OTEL_TRACES_SAMPLER`, ...) still override what is set here.
public enum OrderTracing {
    /// Bootstraps the process's tracer: spans of `serviceName` exported over OTLP/HTTP (JSON) to
    /// `endpoint` (a collector's `/v1/traces`), exported every `exportInterval`. Call it once per process.
    public static func bootstrap(serviceName: String, endpoint: String, exportInterval: Duration = .seconds(5)) throws
        -> some Service
    {
        var configuration = OTel.Configuration.default
        configuration.serviceName = serviceName
        configuration.propagators = [.traceContext]
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        configuration.traces.sampler = .parentBasedAlwaysOn
        configuration.traces.batchSpanProcessor.scheduleDelay = exportInterval
        configuration.traces.otlpExporter.protocol = .httpJSON
        configuration.traces.otlpExporter.endpoint = endpoint
        configuration.diagnosticLogLevel = .warning
        return try OTel.bootstrap(configuration: configuration)
    }
}
