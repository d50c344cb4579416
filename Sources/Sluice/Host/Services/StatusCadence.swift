/// When a host publishes its status to the control topic (pure: the publisher asks, then says what it wrote).
///
/// At once when the applied control position moves (writers of control records wait for it); a changed shard
/// state or pause reason at most once a second (a flag flip moves every shard through several states, and every
/// host and CLI call reads every record); otherwise every 5 s, as the heartbeat that keeps the host listed.
struct StatusCadence: Sendable {
    /// What decides whether to publish: the applied position, each shard's state and pause reasons.
    struct Said: Sendable, Equatable {
        var applied: Int64
        var shards: [String: String]
        var reasons: [String: [String]]
    }

    /// How often a changed state or reason may be published.
    static let changeInterval = Duration.seconds(1)
    /// The heartbeat.
    static let heartbeat = Duration.seconds(5)

    private var said: Said?
    private var saidAt: ContinuousClock.Instant?

    /// Whether `now` is the time to publish `current`.
    func due(_ current: Said, now: ContinuousClock.Instant) -> Bool {
        guard let said, let saidAt else { return true }
        let since = now - saidAt
        if said.applied != current.applied || since >= Self.heartbeat { return true }
        return (said.shards != current.shards || said.reasons != current.reasons) && since >= Self.changeInterval
    }

    /// `current` was published at `now`.
    mutating func published(_ current: Said, at now: ContinuousClock.Instant) {
        said = current
        saidAt = now
    }
}
