import ServiceLifecycle

/// Runs `work` every `interval` on `clock` until cancelled: the host's tick (host time, 1 s).
struct PeriodicTask: Service {
    let interval: Duration
    let clock: any HostClock
    let work: @Sendable () -> Void

    func run() async throws {
        while !Task.isCancelled {
            try? await clock.sleep(until: clock.now + interval)
            if Task.isCancelled { return }
            work()
        }
    }
}
