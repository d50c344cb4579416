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
