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
    }

    /// What comes after failed call `attempt` (1 for the first call): a retry while `retries` allow one, then
    /// ``then``.
    func step(afterFailedAttempt attempt: Int) -> Step {
        if attempt <= retries { return .retry(after: backoff.delay(attempt: attempt)) }
        switch then {
        case .stop: return .stop
        case .skip: return .skip
        case .deadLetter: return .deadLetter
        }
    }
}
