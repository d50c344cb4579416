import ServiceLifecycle

/// Stores the watermarks of the pipelines that progressed, so the consumer's periodic commits carry progress:
/// pushed by the pipelines (``ShardRegistry/progressed(_:)``) rather than looked for, at most once per
/// `interval` on `clock`, so that thousands of completions a second are a few stores and idle shards (10,000 of
/// them) cost nothing. Runs until cancelled.
struct WatermarkStorer: Service {
    let registry: ShardRegistry
    let consumer: any ShardConsumer
    let clock: any HostClock
    let interval: Duration

    func run() async throws {
        for await _ in registry.progress {
            registry.storeDue(consumer: consumer)
            try? await clock.sleep(until: clock.now + interval)
        }
    }
}
