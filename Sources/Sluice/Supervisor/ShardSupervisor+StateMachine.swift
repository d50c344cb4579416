import SluiceKafka

/// Why a shard stopped processing.
public enum ShardStopReason: String, Sendable, Hashable {
    /// Its flag is off.
    case flag
    /// Its partition was revoked or lost, or the host is shutting down.
    case released
}

extension ShardSupervisor {
    /// The lifecycle of one shard (docs/architecture.md §4): `starting`, `running`, `draining`, `off`,
    /// `backingOff(attempt, until)`, `tripped(since, reason)`, `stopped`. Pure: it decides, the supervisor
    /// acts. Time comes in as instants of any clock, so tests drive it with a manual clock.
    struct StateMachine<Instant: InstantProtocol> where Instant.Duration == Duration {
        /// What to do after a drain.
        enum DrainTarget: Equatable {
            case off
            case restart
            case stop
        }

        enum State: Equatable {
            case created
            case starting(attempt: Int, probe: Bool)
            case running(attempt: Int, since: Instant, probe: Bool)
            case draining(target: DrainTarget, attempt: Int)
            case off
            case backingOff(attempt: Int, until: Instant)
            case tripped(since: Instant, reason: String, cooldown: Duration?)
            case stopped

            /// Whether the shard's pipeline runs normally (not starting, draining or stopped).
            var isRunning: Bool {
                if case .running = self { return true }
                return false
            }

            /// Whether the breaker holds the shard.
            var isTripped: Bool {
                if case .tripped = self { return true }
                return false
            }
        }

        /// Something observers are told.
        enum Event: Equatable {
            case started(attempt: Int, probe: Bool)
            case stopped(ShardStopReason)
            case crashed(reason: String, attempt: Int)
            case backingOff(until: Instant)
            case tripped(reason: String)
            case reset
            case healthy
        }

        /// What the supervisor must do, in this order: commit, stop or start the pipeline, arm the timer,
        /// publish events. Pause state is not an action: after every event the supervisor derives it whole
        /// from ``pauseReasons`` and reconciles the partition with it (docs/architecture.md §5).
        struct Actions: Equatable {
            var commit = false
            /// Ask the running pipeline to drain.
            var stopPipeline = false
            /// Start a pipeline; `seekToCommitted` for every start but the first of an assignment, so the
            /// partition is read again from the last committed offset (the failed message included).
            var startPipeline: (seekToCommitted: Bool, probe: Bool)?
            /// When to call ``timerFired(now:)`` next.
            var wakeAt: Instant?
            var events: [Event] = []

            static func == (lhs: Actions, rhs: Actions) -> Bool {
                lhs.commit == rhs.commit
                    && lhs.stopPipeline == rhs.stopPipeline
                    && lhs.startPipeline?.seekToCommitted == rhs.startPipeline?.seekToCommitted
                    && lhs.startPipeline?.probe == rhs.startPipeline?.probe && lhs.wakeAt == rhs.wakeAt
                    && lhs.events == rhs.events
            }
        }

        private(set) var state = State.created
        let policy: BreakerPolicy
        private var flagOn: Bool
        private var crashTimes: [Instant] = []
        /// The cooldown the next trip uses; doubles after a failed probe, back to the policy's when healthy.
        private var cooldown: Duration?

        init(policy: BreakerPolicy, flagOn: Bool) {
            self.policy = policy
            self.flagOn = flagOn
            self.cooldown = policy.cooldown
        }

        /// The current attempt count (restarts since the shard was last healthy).
        var attempt: Int {
            switch state {
            case .starting(let attempt, _), .running(let attempt, _, _), .draining(_, let attempt),
                .backingOff(let attempt, _):
                attempt
            case .created, .off, .tripped, .stopped:
                0
            }
        }

        /// The reasons the shard's partition must be paused for in this state, derived whole every time
        /// (docs/architecture.md §5): nothing fetches unless a pipeline runs to take it.
        var pauseReasons: Set<KafkaPauseReason> {
            switch state {
            case .created: flagOn ? [] : [.flag]
            case .starting, .running: []
            case .draining(.off, _), .off: [.flag]
            case .draining(.restart, _), .draining(.stop, _), .stopped: [.draining]
            case .backingOff, .tripped: [.breaker]
            }
        }

        /// Whether the flag is on, as the machine last heard.
        var isFlagOn: Bool { flagOn }

        // MARK: Events

        /// The partition was assigned; its flag decides whether it starts.
        mutating func assigned() -> Actions {
            switch state {
            case .created:
                if flagOn {
                    state = .starting(attempt: 0, probe: false)
                    return Actions(startPipeline: (false, false))
                }
                state = .off
                return Actions(events: [.stopped(.flag)])
            case .starting, .running, .draining, .off, .backingOff, .tripped, .stopped:
                preconditionFailure("assigned() in state \(state)")
            }
        }

        /// The partition was assigned while the group's control plane holds it tripped (a host tripped it
        /// before the partition came here): it stays tripped, as it would have on that host, with the
        /// policy's cooldown from now. A reset or a flag cycle clears it, as any trip.
        mutating func assignedTripped(now: Instant, reason: String) -> Actions {
            switch state {
            case .created:
                state = .tripped(since: now, reason: reason, cooldown: cooldown)
                var actions = Actions(events: [.tripped(reason: reason)])
                if let cooldown { actions.wakeAt = now.advanced(by: cooldown) }
                return actions
            case .starting, .running, .draining, .off, .backingOff, .tripped, .stopped:
                preconditionFailure("assignedTripped() in state \(state)")
            }
        }

        /// The supervisor launched the pipeline it was asked to start.
        mutating func started(now: Instant) -> Actions {
            switch state {
            case .starting(let attempt, let probe):
                state = .running(attempt: attempt, since: now, probe: probe)
                return Actions(
                    wakeAt: now.advanced(by: policy.healthyAfter), events: [.started(attempt: attempt, probe: probe)])
            case .created, .running, .draining, .off, .backingOff, .tripped, .stopped:
                preconditionFailure("started() in state \(state)")
            }
        }

        /// The pipeline crashed. `jitter` is a random number in 0...1 (0 in tests). `trip` trips the shard
        /// whatever the policy says (too many abandoned handler calls still running).
        mutating func crashed(now: Instant, reason: String, jitter: Double, trip: Bool = false) -> Actions {
            switch state {
            case .starting(let attempt, let probe), .running(let attempt, _, let probe):
                return crash(now: now, reason: reason, attempt: attempt, probe: probe, jitter: jitter, trip: trip)
            case .draining(let target, let attempt):
                switch target {
                case .restart:
                    return crash(now: now, reason: reason, attempt: attempt, probe: false, jitter: jitter, trip: trip)
                case .off:
                    state = .off
                    return Actions(
                        commit: true, events: [.crashed(reason: reason, attempt: attempt + 1), .stopped(.flag)])
                case .stop:
                    state = .stopped
                    return Actions(
                        commit: true, events: [.crashed(reason: reason, attempt: attempt + 1), .stopped(.released)])
                }
            case .created, .off, .backingOff, .tripped, .stopped:
                preconditionFailure("crashed() in state \(state)")
            }
        }

        /// The pipeline finished: after a requested drain, or because its partition's messages ended.
        mutating func drained() -> Actions {
            switch state {
            case .draining(.off, _):
                state = .off
                return Actions(commit: true, events: [.stopped(.flag)])
            case .draining(.restart, _):
                state = .starting(attempt: 0, probe: false)
                return Actions(commit: true, startPipeline: (true, false))
            case .draining(.stop, _), .starting, .running:
                state = .stopped
                return Actions(commit: true, events: [.stopped(.released)])
            case .created, .off, .backingOff, .tripped, .stopped:
                preconditionFailure("drained() in state \(state)")
            }
        }

        /// The shard's flag changed (or was re-applied).
        mutating func flagChanged(on: Bool) -> Actions {
            flagOn = on
            switch (state, on) {
            case (.created, _), (.stopped, _):
                return Actions()
            case (.starting(let attempt, _), false), (.running(let attempt, _, _), false):
                state = .draining(target: .off, attempt: attempt)
                return Actions(stopPipeline: true)
            case (.starting, true), (.running, true):
                return Actions()
            case (.draining(.off, let attempt), true):
                state = .draining(target: .restart, attempt: attempt)
                return Actions()
            case (.draining(.restart, let attempt), false):
                state = .draining(target: .off, attempt: attempt)
                return Actions()
            case (.draining, _):
                return Actions()
            case (.off, true):
                // A flag cycle resets the breaker.
                crashTimes.removeAll()
                cooldown = policy.cooldown
                state = .starting(attempt: 0, probe: false)
                return Actions(startPipeline: (true, false))
            case (.off, false):
                return Actions()
            case (.backingOff, false), (.tripped, false):
                state = .off
                return Actions(events: [.stopped(.flag)])
            case (.backingOff, true), (.tripped, true):
                // Leaving tripped takes a cycle: off, then on.
                return Actions()
            }
        }

        /// The timer armed by ``Actions/wakeAt`` fired (early or late calls are harmless).
        mutating func timerFired(now: Instant) -> Actions {
            switch state {
            case .running(let attempt, let since, let probe):
                let healthyAt = since.advanced(by: policy.healthyAfter)
                guard now >= healthyAt else { return Actions(wakeAt: healthyAt) }
                guard attempt > 0 || probe || !crashTimes.isEmpty else { return Actions() }
                crashTimes.removeAll()
                cooldown = policy.cooldown
                state = .running(attempt: 0, since: since, probe: false)
                return Actions(events: [.healthy])
            case .backingOff(let attempt, let until):
                guard now >= until else { return Actions(wakeAt: until) }
                state = .starting(attempt: attempt, probe: false)
                return Actions(startPipeline: (true, false))
            case .tripped(let since, _, let cooldown):
                guard let cooldown, flagOn else { return Actions() }
                let probeAt = since.advanced(by: cooldown)
                guard now >= probeAt else { return Actions(wakeAt: probeAt) }
                state = .starting(attempt: 0, probe: true)
                return Actions(startPipeline: (true, true))
            case .created, .starting, .draining, .off, .stopped:
                return Actions()
            }
        }

        /// An operator reset: a tripped or backing-off shard starts now with a clean history; a running one
        /// forgets its crashes.
        mutating func reset(now: Instant) -> Actions {
            switch state {
            case .tripped, .backingOff:
                crashTimes.removeAll()
                cooldown = policy.cooldown
                guard flagOn else {
                    state = .off
                    return Actions(events: [.reset, .stopped(.flag)])
                }
                state = .starting(attempt: 0, probe: false)
                return Actions(startPipeline: (true, false), events: [.reset])
            case .running(_, let since, _):
                crashTimes.removeAll()
                cooldown = policy.cooldown
                state = .running(attempt: 0, since: since, probe: false)
                return Actions(events: [.reset])
            case .created, .starting, .draining, .off, .stopped:
                return Actions()
            }
        }

        /// The partition is revoked or lost, or the host shuts down.
        mutating func stop() -> Actions {
            switch state {
            case .starting(let attempt, _), .running(let attempt, _, _), .draining(_, let attempt):
                state = .draining(target: .stop, attempt: attempt)
                return Actions(stopPipeline: true)
            case .created, .off, .backingOff, .tripped:
                state = .stopped
                return Actions(commit: true, events: [.stopped(.released)])
            case .stopped:
                return Actions()
            }
        }

        // MARK: Crash handling

        private mutating func crash(now: Instant, reason: String, attempt: Int, probe: Bool, jitter: Double, trip: Bool)
            -> Actions
        {
            crashTimes.append(now)
            if let within = policy.trip?.within {
                crashTimes.removeAll { $0.advanced(by: within) < now }
            }
            var actions = Actions(commit: true, events: [.crashed(reason: reason, attempt: attempt + 1)])
            let tripsNow = trip || probe || policy.trip.map { crashTimes.count >= $0.crashes } ?? false
            if tripsNow {
                if probe, let current = cooldown { cooldown = current * 2 }
                state = .tripped(since: now, reason: reason, cooldown: cooldown)
                actions.events.append(.tripped(reason: reason))
                if let cooldown { actions.wakeAt = now.advanced(by: cooldown) }
                return actions
            }
            let jittered =
                policy.restartBackoff.delay(attempt: attempt + 1) * (1 + policy.restartBackoff.jitter * jitter)
            let delay = Duration.milliseconds(jittered.milliseconds)
            let until = now.advanced(by: delay)
            state = .backingOff(attempt: attempt + 1, until: until)
            actions.wakeAt = until
            actions.events.append(.backingOff(until: until))
            return actions
        }
    }
}
