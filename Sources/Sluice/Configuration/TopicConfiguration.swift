/// How a topic's shards process messages. Every field has a documented default.
public struct TopicConfiguration: Sendable, Hashable {
    /// The order in which a partition's messages are handled.
    public enum Ordering: String, Sendable, Hashable, CaseIterable {
        /// Strictly in offset order, one message (or batch) at a time. `processors` is ignored.
        case partition
        /// In order per key, keys in parallel over `processors` lanes (a message without a key goes to
        /// the first lane).
        case key
        /// No order: `processors` take the next message as they free up.
        case none
    }

    /// What happens to a message whose handler call killed the process (a trap) `onCrash.after` times.
    public enum CrashAction: String, Sendable, Hashable, CaseIterable {
        /// The shard is held tripped at the message (nothing at or past it is committed) until an operator
        /// skips it or resets the shard.
        case stop
        /// The message is written to the dead-letter topic with its crash report, then committed.
        case deadLetter
    }

    /// Crash containment (docs/architecture.md §12): what a message that killed the process gets.
    public struct CrashPolicy: Sendable, Hashable {
        /// Process deaths attributed to one message before it is quarantined (at least 1).
        public var after: Int
        /// What a quarantined message gets.
        public var then: CrashAction

        /// Creates a policy.
        public init(after: Int = 1, then: CrashAction = .stop) {
            self.after = after
            self.then = then
        }
    }

    /// What happens to a message whose handler still fails after the retries.
    public enum FailureAction: String, Sendable, Hashable, CaseIterable {
        /// The shard stops at that message (nothing past it is committed) and crashes.
        case stop
        /// The message is written to the dead-letter topic, then committed.
        case deadLetter
        /// The message is logged, counted and committed.
        case skip
        /// The message is written to the topic's first retry topic (`T.retry.<delay>`, one per
        /// ``FailurePolicy/delays``) and committed, so the partition goes on at once. The host consumes the retry
        /// topics with the topic's handler and hands each message to it again once its delay passed; a message
        /// failing there goes to the next retry topic, and after the last one to the dead-letter topic.
        case retryLater
    }

    /// What handlers' output (``ShardContext/send(_:)``) and the shard's offsets promise together.
    public enum OutputGuarantee: String, Sendable, Hashable, CaseIterable {
        /// Each record is acknowledged before its message counts as done; a message handled again after a crash
        /// writes its output again.
        case atLeastOnce
        /// A shard's output, its dead letters and its offsets are committed in one Kafka transaction (a
        /// transactional producer per shard), every `kafka.commitInterval`: `read_committed` readers see a
        /// message's output exactly when its offset is committed, whatever crashes, traps or rebalances happen.
        case exactlyOnce
    }

    /// Batching into a ``BatchHandler``.
    public struct Batching: Sendable, Hashable {
        /// Most messages per batch.
        public var size: Int
        /// How long a partly filled batch waits for more messages.
        public var timeout: Duration

        /// Creates a batching setting.
        public init(size: Int, timeout: Duration) {
            self.size = size
            self.timeout = timeout
        }
    }

    /// Exponential backoff between `initial` and `maximum`.
    public struct Backoff: Sendable, Hashable {
        /// The first delay.
        public var initial: Duration
        /// The largest delay.
        public var maximum: Duration
        /// Factor between consecutive delays.
        public var multiplier: Double

        /// Creates a backoff.
        public init(initial: Duration, maximum: Duration, multiplier: Double = 2) {
            self.initial = initial
            self.maximum = maximum
            self.multiplier = multiplier
        }

        /// The delay before retry `attempt` (1 for the first retry).
        public func delay(attempt: Int) -> Duration {
            exponentialDelay(initial: initial, maximum: maximum, multiplier: multiplier, attempt: attempt)
        }
    }

    /// The failure policy: retry in place, then ``then``.
    public struct FailurePolicy: Sendable, Hashable {
        /// Retries after the first failure (0: none).
        public var retries: Int
        /// Delay between retries.
        public var backoff: Backoff
        /// What to do when the retries are used up.
        public var then: FailureAction
        /// With ``FailureAction/retryLater``: how long a message waits in each retry topic, in order (at least
        /// one; each a whole number of milliseconds, at most a day, no two alike). `[30s, 5m]` makes the topics
        /// `T.retry.30s` and `T.retry.5m`.
        public var delays: [Duration]
        /// With ``FailureAction/retryLater``: whether a host creates missing retry topics at start (with the
        /// topic's partition count and 7 days' retention). Off: a missing one refuses the start. Default on.
        public var createTopics: Bool

        /// Creates a policy.
        public init(
            retries: Int = 0, backoff: Backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5)),
            then: FailureAction = .stop, delays: [Duration] = [], createTopics: Bool = true
        ) {
            self.retries = retries
            self.backoff = backoff
            self.then = then
            self.delays = delays
            self.createTopics = createTopics
        }
    }

    /// What a retry topic's configuration says about it: the host makes one per delay of a topic whose
    /// `onFailure.then` is ``FailureAction/retryLater``, from that topic's settings.
    public struct RetryStage: Sendable, Hashable {
        /// The topic whose failed messages it holds.
        public let topic: String
        /// Its place among the topic's delays (0 for the first).
        public let index: Int
        /// How long a message waits in it.
        public let delay: Duration
    }

    /// What output and offsets promise together. Default ``OutputGuarantee/atLeastOnce``.
    public var output: OutputGuarantee = .atLeastOnce
    /// Message order. Default ``Ordering/partition``.
    public var ordering: Ordering = .partition
    /// Parallel lanes per shard for `key` and `none` ordering. Default 1.
    public var processors: Int = 1
    /// Batching into a ``BatchHandler``; `nil` hands messages one at a time. Default `nil`.
    public var batch: Batching?
    /// Messages a shard may hold between fetch and completion. At it the shard takes no more, and if no
    /// room frees within 100 ms the partition is paused (reason `backpressure`) until half of them
    /// completed. Default 1,000, or four batches (`4 × batch.size`) when that is more, so that a batcher
    /// always has the next batch filling while one is handled.
    public var maxInFlight: Int {
        get { explicitMaxInFlight ?? max(1000, 4 * (batch?.size ?? 0)) }
        set { explicitMaxInFlight = newValue }
    }
    private var explicitMaxInFlight: Int?
    /// The failure policy. Default: no retries, then ``FailureAction/stop``.
    public var onFailure = FailurePolicy()
    /// The dead-letter topic, required when `onFailure.then` is `deadLetter` or `retryLater`.
    public var deadLetterTopic: String?
    /// Set on a retry topic's configuration (see ``RetryStage``); nil for a topic of the service's own.
    public internal(set) var retryStage: RetryStage?
    /// A handler call running longer than this crashes its shard. Default 30 s.
    public var handlerTimeout: Duration = .seconds(30)
    /// How long a restarted shard waits for handler calls its last pipelines abandoned (past
    /// `handlerTimeout`, still running) before it hands out messages again. Default 60 s. Until then a
    /// message is never in two calls at once.
    public var abandonTimeout: Duration = .seconds(60)
    /// The most abandoned handler calls of one shard that may still be running; one more trips the shard
    /// whatever its breaker policy (each is a task, and what it holds, that Swift cannot stop). Default 3.
    public var maxAbandonedCalls = 3
    /// What a message whose handler call killed the process gets. Default: quarantined after 1 death,
    /// shard held at it (``CrashAction/stop``).
    public var onCrash = CrashPolicy()
    /// How crashed shards restart and when they trip. Default ``BreakerPolicy/standard``: restart with
    /// backoff 1 s..5 min, trip after 5 crashes within 10 min, no automatic probe, healthy after 60 s.
    public var breaker: BreakerPolicy = .standard

    /// Creates the default configuration.
    public init() {}

    /// The number of lanes the pipeline runs.
    var laneCount: Int { ordering == .partition ? 1 : max(processors, 1) }
}

extension TopicConfiguration {
    /// Checks the values; the error names the topic and the key.
    func validate(topic: String) throws {
        func fail(_ key: String, _ reason: String) -> SluiceError {
            SluiceError(code: .configuration, message: "topics.\(topic).\(key): \(reason)")
        }
        if processors < 1 { throw fail("processors", "must be at least 1, got \(processors)") }
        if maxInFlight < 1 { throw fail("maxInFlight", "must be at least 1, got \(maxInFlight)") }
        if let batch {
            if batch.size < 1 { throw fail("batch.size", "must be at least 1, got \(batch.size)") }
            if maxInFlight < batch.size {
                throw fail(
                    "maxInFlight",
                    "must be at least batch.size (\(batch.size)), got \(maxInFlight): a batch could never fill")
            }
            if batch.timeout <= .zero { throw fail("batch.timeout", "must be positive, got \(batch.timeout)") }
        }
        if onFailure.retries < 0 { throw fail("onFailure.retries", "must be 0 or more, got \(onFailure.retries)") }
        if onFailure.backoff.initial <= .zero || onFailure.backoff.maximum < onFailure.backoff.initial {
            throw fail(
                "onFailure.backoff",
                "needs 0 < initial <= maximum, got \(onFailure.backoff.initial)..\(onFailure.backoff.maximum)")
        }
        if onFailure.then == .deadLetter || onFailure.then == .retryLater, (deadLetterTopic ?? "").isEmpty {
            throw fail(
                "deadLetterTopic",
                onFailure.then == .deadLetter
                    ? "is required when onFailure.then is deadLetter"
                    : "is required when onFailure.then is retryLater (a message failing after its last delay goes there)"
            )
        }
        try validateDelays(topic: topic, fail)
        if handlerTimeout <= .zero { throw fail("handlerTimeout", "must be positive, got \(handlerTimeout)") }
        if abandonTimeout < .zero { throw fail("abandonTimeout", "must be 0 or more, got \(abandonTimeout)") }
        if onCrash.after < 1 { throw fail("onCrash.after", "must be at least 1, got \(onCrash.after)") }
        if onCrash.then == .deadLetter, (deadLetterTopic ?? "").isEmpty {
            throw fail("deadLetterTopic", "is required when onCrash.then is deadLetter")
        }
        if maxAbandonedCalls < 0 { throw fail("maxAbandonedCalls", "must be 0 or more, got \(maxAbandonedCalls)") }
        let backoff = breaker.restartBackoff
        if backoff.initial <= .zero || backoff.maximum < backoff.initial {
            throw fail(
                "breaker.restartBackoff", "needs 0 < initial <= maximum, got \(backoff.initial)..\(backoff.maximum)")
        }
        if let trip = breaker.trip, trip.crashes < 1 {
            throw fail("breaker.trip.crashes", "must be at least 1, got \(trip.crashes)")
        }
        if breaker.healthyAfter <= .zero {
            throw fail("breaker.healthyAfter", "must be positive, got \(breaker.healthyAfter)")
        }
    }
}

/// `initial × multiplier^(attempt − 1)`, at most `maximum`.
func exponentialDelay(initial: Duration, maximum: Duration, multiplier: Double, attempt: Int) -> Duration {
    var delay = initial
    for _ in 1..<max(attempt, 1) {
        delay = delay * multiplier
        if delay >= maximum { return maximum }
    }
    return min(delay, maximum)
}
