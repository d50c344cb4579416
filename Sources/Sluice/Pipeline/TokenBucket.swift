/// A rate limit in messages a second with a burst of a tenth of a second (at least one message): the
/// throttle a rate flag such as `200/s` puts on a shard. Pure: the caller passes the time.
struct TokenBucket: Sendable, Equatable {
    let rate: Double
    let capacity: Double
    private(set) var tokens: Double
    private(set) var last: ContinuousClock.Instant

    init(rate: Double, now: ContinuousClock.Instant) {
        precondition(rate > 0, "a rate must be positive")
        self.rate = rate
        self.capacity = max(rate / 10, 1)
        self.tokens = max(rate / 10, 1)
        self.last = now
    }

    /// Takes up to `wanted` whole tokens. Returns how many it took; when none, also when the next one is due.
    mutating func take(_ wanted: Int, now: ContinuousClock.Instant) -> (taken: Int, nextAt: ContinuousClock.Instant?) {
        if now > last {
            tokens = min(capacity, tokens + (now - last).seconds * rate)
            last = now
        }
        let taken = min(wanted, Int(tokens))
        if taken > 0 {
            tokens -= Double(taken)
            return (taken, nil)
        }
        // At most an hour: a rate is at least 0.001/s, and the wait is recomputed when the next one is due.
        let wait = min((1 - tokens) / rate, 3_600)
        return (0, now + .nanoseconds(Int64((wait * 1e9).rounded(.up))))
    }
}
