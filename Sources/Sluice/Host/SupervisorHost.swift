import Metrics
import SluiceKafka
import Tracing

/// What the supervisor loop tells its host and reads from it: the only part of ``SluiceHost`` the loop sees.
protocol SupervisorHost: Sendable {
    /// The consumer got an assignment (joined), or lost the one it had.
    func noteAssignment(lost: Bool)
    /// The loop handled a tick.
    func noteTick()
    /// A shard event, for the host's subscribers.
    func publish(_ event: ShardEvent)
    /// Every shard's status now (lag gauges and stall checks read it once a tick).
    var shards: [ShardStatus] { get }
}

extension SluiceHost: SupervisorHost {}

extension SupervisorLoop {
    /// What the loop works with besides the consumer and its inputs, handed in explicitly.
    struct Environment {
        let configuration: SluiceConfiguration
        let flags: FlagResolver
        /// The shards' views, stored offsets and counters, read outside the loop.
        let registry: ShardRegistry
        /// The time of the host's timed logic (backoffs, probes, ticks).
        let clock: any HostClock
        /// Real time, for what exists to notice real time passing (the handler watchdog).
        let watchdogClock: any HostClock
        /// Lets one suspect of an unattributed death into a handler call at a time.
        let carefulGate: CarefulGate
        /// The crash journal and quarantines, when the host keeps them.
        let crashContainment: CrashContainment?
        let metricsFactory: any MetricsFactory
        /// Spans per handler call; nil while tracing is off.
        let tracer: (any Tracer)?
    }
}
