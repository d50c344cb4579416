/// Tells a stalled shard from an idle or a paused one, pure: the supervisor loop hands it one observation of
/// the shard per tick and carries out the action it returns (docs/architecture.md, "Stalls").
///
/// A shard that runs, unpaused, with messages waiting (lag), and makes no progress for `stallAfter` is
/// stalled: reported once, cleared on progress. One that has fetched nothing since its assignment for
/// `unstartedAfter` first gets its fetcher restarted (librdkafka may have left the partition unstarted after a
/// committed-offset fetch it does not retry), once per stall.
struct StallDetector<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    /// A pipeline's progress: which pipeline and how many messages it has done.
    struct Progress: Sendable, Equatable {
        var pipeline: UInt64
        var done: Int
    }

    /// What the supervisor sees of the shard at a tick.
    struct Observation: Sendable {
        /// The current pipeline's progress (nil between pipelines).
        var progress: Progress?
        /// Running, unpaused, with lag: a shard that should be making progress.
        var expectedToProgress: Bool
        /// Whether the partition fetched anything in this assignment (a consumer position).
        var fetched: Bool
    }

    enum Action: Sendable, Equatable {
        case none
        /// Progress after a stall: report it cleared.
        case cleared
        /// Nothing fetched since the assignment: ask the consumer to restart the partition's fetcher.
        case restartFetcher
        /// No progress for `stallAfter`, since the instant given: report it.
        case stalled(since: Instant)
    }

    let stallAfter: Duration
    let unstartedAfter: Duration
    /// The last progress seen and when it changed (or the shard stopped being expected to progress).
    private(set) var lastProgress: Progress?
    private(set) var lastProgressAt: Instant
    /// Since when the shard is reported stalled.
    private(set) var stalledSince: Instant?
    private var fetcherRestartAsked = false

    init(stallAfter: Duration, unstartedAfter: Duration, now: Instant) {
        self.stallAfter = stallAfter
        self.unstartedAfter = unstartedAfter
        self.lastProgressAt = now
    }

    mutating func observe(_ observation: Observation, now: Instant) -> Action {
        if !observation.expectedToProgress || observation.progress != lastProgress {
            lastProgress = observation.progress
            lastProgressAt = now
            fetcherRestartAsked = false
            guard stalledSince != nil else { return .none }
            stalledSince = nil
            return .cleared
        }
        let still = lastProgressAt.duration(to: now)
        if !fetcherRestartAsked, !observation.fetched, still >= unstartedAfter {
            fetcherRestartAsked = true
            return .restartFetcher
        }
        if stalledSince == nil, still >= stallAfter {
            stalledSince = lastProgressAt
            return .stalled(since: lastProgressAt)
        }
        return .none
    }
}
