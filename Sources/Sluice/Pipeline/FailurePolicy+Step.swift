/// The failure policy's decisions, pure: what comes after a failed handler call.
extension TopicConfiguration.FailurePolicy {
    /// What comes after a failed call.
    enum Step: Sendable, Equatable {
        /// Call again after the delay.
        case retry(after: Duration)
        /// Crash the shard at the message (the breaker restarts it).
        case stop
        /// Count the message as skipped and go on.
        case skip
        /// Write the message to the dead-letter topic and go on.
        case deadLetter
        /// Write the message to the retry topic of delay `stage` (0 for the first) and go on.
        case retryLater(stage: Int)
    }

    /// What comes after failed call `attempt` (1 for the first call) of a message read from a topic at retry
    /// `stage` (nil: the topic itself): a retry while `retries` allow one, then ``then``; with `retryLater`,
    /// the next retry topic, and after the last one the dead-letter topic.
    func step(afterFailedAttempt attempt: Int, stage: TopicConfiguration.RetryStage? = nil) -> Step {
        if attempt <= retries { return .retry(after: backoff.delay(attempt: attempt)) }
        switch then {
        case .stop: return .stop
        case .skip: return .skip
        case .deadLetter: return .deadLetter
        case .retryLater:
            let next = stage.map { $0.index + 1 } ?? 0
            return next < delays.count ? .retryLater(stage: next) : .deadLetter
        }
    }
}
