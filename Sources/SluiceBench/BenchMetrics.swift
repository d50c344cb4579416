import CoreMetrics
import Prometheus
import Synchronization

/// The bench's metrics backend: Prometheus (as a service runs it) for the cases that measure it, none for
/// the others. swift-metrics is bootstrapped once per process while the cases share one, so each case
/// chooses when its host creates its metric handles.
final class BenchMetricsFactory: MetricsFactory {
    let registry = PrometheusCollectorRegistry()
    private let prometheus: PrometheusMetricsFactory
    private let noop = NOOPMetricsHandler.instance
    private let enabled = Atomic<Bool>(false)

    init() {
        prometheus = PrometheusMetricsFactory(registry: registry)
    }

    /// Whether handles created from now on go to Prometheus.
    func setPrometheus(_ on: Bool) { enabled.store(on, ordering: .relaxed) }

    private var on: Bool { enabled.load(ordering: .relaxed) }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        on ? prometheus.makeCounter(label: label, dimensions: dimensions) : noop
    }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        on ? prometheus.makeFloatingPointCounter(label: label, dimensions: dimensions) : noop
    }
    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        on ? prometheus.makeMeter(label: label, dimensions: dimensions) : noop
    }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        on ? prometheus.makeRecorder(label: label, dimensions: dimensions, aggregate: aggregate) : noop
    }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        on ? prometheus.makeTimer(label: label, dimensions: dimensions) : noop
    }
    func destroyCounter(_ handler: any CounterHandler) {
        if !(handler is NOOPMetricsHandler) { prometheus.destroyCounter(handler) }
    }
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if !(handler is NOOPMetricsHandler) { prometheus.destroyFloatingPointCounter(handler) }
    }
    func destroyMeter(_ handler: any MeterHandler) {
        if !(handler is NOOPMetricsHandler) { prometheus.destroyMeter(handler) }
    }
    func destroyRecorder(_ handler: any RecorderHandler) {
        if !(handler is NOOPMetricsHandler) { prometheus.destroyRecorder(handler) }
    }
    func destroyTimer(_ handler: any TimerHandler) {
        if !(handler is NOOPMetricsHandler) { prometheus.destroyTimer(handler) }
    }
}
