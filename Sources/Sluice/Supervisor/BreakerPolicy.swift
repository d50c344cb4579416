/// How a topic's shards are restarted after crashes, and when they trip (docs/architecture.md §4).
public struct BreakerPolicy: Sendable, Hashable {
    /// Backoff between restarts: from `initial` up to `maximum`, times `multiplier` per attempt, with up to
    /// `jitter` (a fraction) added at random.
    public struct RestartBackoff: Sendable, Hashable {
        /// The first delay.
        public var initial: Duration
        /// The largest delay.
        public var maximum: Duration
        /// Factor between consecutive delays.
        public var multiplier: Double
        /// Random extra, as a fraction of the delay (0.1 adds up to 10 %).
        public var jitter: Double

        /// Creates a backoff.
        public init(initial: Duration, maximum: Duration, multiplier: Double = 2, jitter: Double = 0.1) {
            self.initial = initial
            self.maximum = maximum
            self.multiplier = multiplier
            self.jitter = jitter
        }

        /// The delay before restart `attempt` (1 for the first), without jitter.
        public func delay(attempt: Int) -> Duration {
            exponentialDelay(initial: initial, maximum: maximum, multiplier: multiplier, attempt: attempt)
        }
    }

    /// Crashes within a sliding window that trip the breaker.
    public struct Trip: Sendable, Hashable {
        /// How many crashes.
        public var crashes: Int
        /// Within how long; `nil` for any time (since the last healthy period).
        public var within: Duration?

        /// Creates a trip threshold.
        public init(crashes: Int, within: Duration?) {
            self.crashes = crashes
            self.within = within
        }
    }

    /// Delay between restarts.
    public var restartBackoff: RestartBackoff
    /// When the breaker trips; `nil`: never, it backs off forever.
    public var trip: Trip?
    /// Time before a tripped shard gets one half-open probe start; `nil`: never (only a flag cycle or an
    /// operator reset brings it back). A crash during the probe trips it again with the cooldown doubled.
    public var cooldown: Duration?
    /// Running this long without a crash resets the attempt count and the crash history.
    public var healthyAfter: Duration

    /// Creates a policy.
    public init(restartBackoff: RestartBackoff, trip: Trip?, cooldown: Duration?, healthyAfter: Duration) {
        self.restartBackoff = restartBackoff
        self.trip = trip
        self.cooldown = cooldown
        self.healthyAfter = healthyAfter
    }

    /// A crash trips at once and stays down until the flag is cycled or an operator resets it.
    public static let latched = BreakerPolicy(
        restartBackoff: .init(initial: .seconds(1), maximum: .seconds(1)), trip: .init(crashes: 1, within: nil),
        cooldown: nil, healthyAfter: .seconds(60))
    /// Restart forever with backoff from 1 s to 5 min; never trips. The default.
    public static let backoff = BreakerPolicy(
        restartBackoff: .init(initial: .seconds(1), maximum: .seconds(300)), trip: nil, cooldown: nil,
        healthyAfter: .seconds(60))
    /// Like Erlang's fuse: backoff from 1 s to 1 min; 5 crashes within 60 s trip it; a probe after 10 min.
    public static let fuse = BreakerPolicy(
        restartBackoff: .init(initial: .seconds(1), maximum: .seconds(60)),
        trip: .init(crashes: 5, within: .seconds(60)),
        cooldown: .seconds(600), healthyAfter: .seconds(60))

    /// The default: restart with backoff from 1 s to 5 min; 5 crashes within 10 min trip it; it stays
    /// tripped until a flag cycle or an operator reset; 60 s without a crash count as healthy.
    public static let standard = BreakerPolicy(
        restartBackoff: .init(initial: .seconds(1), maximum: .seconds(300)),
        trip: .init(crashes: 5, within: .seconds(600)),
        cooldown: nil, healthyAfter: .seconds(60))

    /// The presets by name, as the configuration file names them.
    public static let presets: [String: BreakerPolicy] = [
        "latched": .latched, "backoff": .backoff, "fuse": .fuse, "standard": .standard,
    ]
}
