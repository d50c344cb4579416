import Logging
import Metrics
import SluiceKafka
import Synchronization

/// Combines flag sources in layers (earlier sources win over later ones, the configured default below
/// all) and decides each shard's flag: the most specific key that is set wins (`orders/3` over `orders`
/// over `*`); with none set, the default.
///
/// It keeps each source's last good values: a source that fails is logged and counted, and its previous
/// flags stay in force.
public final class FlagResolver: Sendable {
    private struct State {
        var lastGood: [[FlagKey: FlagSetting]]
        var merged: [FlagKey: FlagSetting] = [:]
        var failures: [String: Int] = [:]
        var lastErrors: [String: String] = [:]
        /// Refreshes are numbered when they start; a source's values are taken only from a refresh newer
        /// than the one they came from last, so two racing refreshes never apply the older load last.
        var refreshesStarted: UInt64 = 0
        var appliedFrom: [UInt64]
    }

    /// The sources, highest precedence first.
    public let sources: [any FlagSource]
    /// Whether shards run when no flag covers them.
    public let defaultEnabled: Bool
    /// How often polled sources are read.
    public let pollInterval: Duration
    /// Topics whose flags also gate others': a retry topic (`orders.retry.30s`) follows its topic's flag
    /// (`orders`) unless a flag of its own is set.
    public let parentTopics: [String: String]
    private let logger: Logger
    private let state: Mutex<State>
    private let errorCounters: [String: Counter]
    /// Signalled by every refresh that changed the layered flags, whoever called it; ``run(onChange:)``
    /// listens. (Announcing only run's own refreshes lost changes another refresh applied first.)
    private let changed = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))

    /// Creates a resolver over `sources`, highest precedence first.
    /// Errors of each source are counted as `sluice_flag_source_errors_total{source}` through `metricsFactory`.
    public init(
        sources: [any FlagSource], defaultEnabled: Bool = true, pollInterval: Duration = .seconds(1),
        metricsFactory: any MetricsFactory = MetricsSystem.factory, parentTopics: [String: String] = [:],
        logger: Logger
    ) {
        self.parentTopics = parentTopics
        self.sources = sources
        self.defaultEnabled = defaultEnabled
        self.pollInterval = pollInterval
        self.logger = logger
        self.state = Mutex(
            State(
                lastGood: Array(repeating: [:], count: sources.count),
                appliedFrom: Array(repeating: 0, count: sources.count)))
        var counters: [String: Counter] = [:]
        for source in sources {
            counters[source.name] = Counter(
                label: "sluice_flag_source_errors_total", dimensions: [("source", source.name)], factory: metricsFactory
            )
        }
        self.errorCounters = counters
    }

    /// The flag of a partition and where it came from: the partition's, its topic's, the parent topic's (for a
    /// retry topic), all topics', or the default, whichever is set first.
    public func setting(for topicPartition: TopicPartition) -> FlagSetting {
        let merged = state.withLock { $0.merged }
        for key in FlagKey.keys(for: topicPartition) {
            if let setting = merged[key] { return setting }
            if key == .topic(topicPartition.topic), let parent = parentTopics[topicPartition.topic],
                let setting = merged[.topic(parent)]
            {
                return setting
            }
        }
        return FlagSetting(enabled: defaultEnabled, source: "default")
    }

    /// Every flag in force, after layering.
    public var flags: [FlagKey: FlagSetting] { state.withLock { $0.merged } }

    /// How many times each source failed to load.
    public var failureCounts: [String: Int] { state.withLock { $0.failures } }

    /// The last load error of each source that failed, until it loads again.
    public var lastErrors: [String: String] { state.withLock { $0.lastErrors } }

    /// Reads every source once. Returns true when the layered flags changed.
    @discardableResult
    public func refresh() async -> Bool {
        let ticket = state.withLock { state -> UInt64 in
            state.refreshesStarted += 1
            return state.refreshesStarted
        }
        var loaded: [[FlagKey: FlagSetting]?] = []
        for source in sources {
            do {
                loaded.append(try await source.load())
            } catch {
                loaded.append(nil)
                errorCounters[source.name]?.increment()
                let message = (error as? SluiceError)?.message ?? String(describing: error)
                let firstTime = state.withLock { state -> Bool in
                    state.failures[source.name, default: 0] += 1
                    defer { state.lastErrors[source.name] = message }
                    return state.lastErrors[source.name] != message
                }
                if firstTime {
                    logger.error(
                        "flag source failed; keeping its last good flags",
                        metadata: ["sluice.flagSource": "\(source.name)", "error": "\(message)"])
                }
            }
        }
        return state.withLock { state in
            for (index, values) in loaded.enumerated() {
                // A newer refresh already applied this source: this load is older, keep the newer one.
                if let values, ticket > state.appliedFrom[index] {
                    state.lastGood[index] = values
                    state.appliedFrom[index] = ticket
                    state.lastErrors[sources[index].name] = nil
                }
            }
            var merged: [FlagKey: FlagSetting] = [:]
            for layer in state.lastGood.reversed() { merged.merge(layer) { _, higher in higher } }
            defer { state.merged = merged }
            if merged != state.merged { changed.continuation.yield() }
            return merged != state.merged
        }
    }

    /// Refreshes every `pollInterval`, and at once when a pushing source signals; calls `onChange` after
    /// each refresh that changed something, this loop's or anyone's (changes that come close together may
    /// be announced once). Returns when the task is cancelled. Call it once per resolver. `clock`: what the
    /// polls are timed on (a host hands in its own; by default a timer thread for this run).
    public func run(
        clock: any HostClock = SystemHostClock(name: "sluice-flag-timers"),
        onChange: @escaping @Sendable () async -> Void
    ) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in self.changed.stream { await onChange() }
            }
            for source in sources {
                guard let changes = source.changes else { continue }
                group.addTask {
                    for await _ in changes { await self.refresh() }
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await clock.sleep(until: clock.now + self.pollInterval)
                    if Task.isCancelled { break }
                    await self.refresh()
                }
            }
            await group.waitForAll()
        }
    }
}
