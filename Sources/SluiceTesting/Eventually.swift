/// Polls `condition` every `poll` until it holds or `timeout` passed; returns whether it held.
///
/// For what a test cannot drive with a clock: other processes, the broker, a rebalance. An error thrown by
/// `condition` counts as "not yet" (a broker still starting, a group still joining). The timeout is a
/// ceiling for a hung test, never a promise about speed: pick it generously.
public func eventually(
    timeout: Duration = .seconds(60), poll: Duration = .milliseconds(50), _ condition: () async throws -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return true }
        try? await Task.sleep(for: poll)
    }
    return (try? await condition()) == true
}

/// Waits until `condition` holds, polling every `poll`; throws ``NotReached`` naming `what` after `timeout`.
///
/// The throwing form of ``eventually(timeout:poll:_:)``, for a step a test cannot go on without: the test
/// fails with "not reached within 60 s: 3 hosts applied the flag". The timeout is a ceiling for a hung
/// test, never a promise about speed.
public func waitUntil(
    _ what: String, timeout: Duration = .seconds(60), poll: Duration = .milliseconds(50),
    _ condition: () async throws -> Bool
) async throws {
    guard await eventually(timeout: timeout, poll: poll, condition) else {
        throw NotReached(what: what, waited: timeout)
    }
}

/// What a test waited for did not happen (see ``waitUntil(_:timeout:poll:_:)``).
public struct NotReached: Error, CustomStringConvertible {
    /// What was waited for.
    public let what: String
    /// How long.
    public let waited: Duration
    /// "not reached within 60 s: what".
    public var description: String { "not reached within \(waited): \(what)" }
}
