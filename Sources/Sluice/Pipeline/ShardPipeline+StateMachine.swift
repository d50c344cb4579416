import SluiceKafka

extension ShardPipeline {
    /// A pipeline's bookkeeping, pure: which offsets are taken and done (the watermark), which were done
    /// before it (completed again without a handler call), the first offset taken, whether it was asked to stop
    /// or crashed (the first crash wins), its lanes, and its counters. The pipeline holds it in a lock and acts
    /// on what each event returns; it has no clock, no task and no I/O, so every rule is tested alone
    /// (`ShardPipelineStateMachineTests`).
    struct StateMachine: Sendable {
        /// What ``take(_:limit:allowed:)`` did.
        struct Taken: Equatable {
            /// How many of the messages were taken (from the front).
            var count: Int
            /// Offsets taken but not to be handed out: below one already taken (the partition was rewound under
            /// the pipeline), or done by an earlier pipeline (completed here).
            var notHandedOut: [Int64]
            /// Whether any was below one already taken.
            var rewound: Bool
        }

        /// How a message came to be done.
        enum Completion: Equatable {
            case processed, skipped, deadLettered, retriedLater
        }

        /// What the pipeline does about a crash.
        enum CrashAction: Equatable {
            /// The first crash: log it, drop the queued work, wake the dispatcher and the watchdog.
            case crashNow(ShardCrash)
            /// It had crashed already; the first crash stands.
            case alreadyCrashed
        }

        private(set) var tracker = OffsetTracker()
        /// The first crash.
        private(set) var crash: ShardCrash?
        private(set) var stopRequested = false
        /// The first offset taken from the source, begun or not (a stop can drop the rest of a batch).
        private(set) var firstTaken: Int64?
        /// Messages taken again and completed without a handler call (done before).
        private(set) var redeliveriesSkipped = 0
        /// Offsets done before this pipeline (by an earlier one of the assignment, or by the group's last owner
        /// per its commit metadata): taken again, they are completed without a handler call.
        private(set) var alreadyDone: Set<Int64>
        private(set) var lanesRunning = 0
        private(set) var counters = Counters()

        init(alreadyDone: Set<Int64> = []) {
            self.alreadyDone = alreadyDone
        }

        /// Whether a stop was requested or it crashed: nothing more is taken or started.
        var halted: Bool { stopRequested || crash != nil }

        /// The offset to commit: everything before it is done. Nil before the first message.
        var watermark: Int64? { tracker.watermark }

        /// Where the next pipeline of the shard reads from: the watermark, or the first offset taken.
        var restartOffset: Int64? { tracker.watermark ?? firstTaken }

        var inFlight: Int { tracker.inFlight }

        /// Offsets done above the watermark, taken or not yet: what a commit's metadata carries.
        var doneAboveWatermark: Set<Int64> {
            let watermark = tracker.watermark ?? Int64.min
            return tracker.completedAboveWatermark.union(alreadyDone.filter { $0 > watermark })
        }

        /// A measure of progress that changes whenever a message is done.
        var progress: Int { counters.processed + counters.skipped + counters.deadLettered + counters.retriedLater }

        /// Whether the dispatcher may take more under `limit` messages in flight (it waits for half).
        func hasRoom(under limit: Int) -> Bool { tracker.inFlight <= limit / 2 }

        // MARK: Events

        /// The group's last owner said these offsets are done (its commit metadata).
        mutating func learnedDone(_ done: Set<Int64>) {
            alreadyDone.formUnion(done)
        }

        /// A batch came from the source, starting at `first`. Returns whether the pipeline is halted (the batch
        /// is then dropped, uncommitted).
        mutating func arrived(first: Int64) -> Bool {
            if firstTaken == nil { firstTaken = first }
            return halted
        }

        /// Takes as many of `messages` as fit: at least one, at most `allowed` (a rate limit) and what fits
        /// under `limit` in flight. Offsets done before are completed at once; offsets at or below one taken
        /// are not taken again.
        mutating func take(_ messages: ArraySlice<Message>, limit: Int, allowed: Int) -> Taken {
            let room = min(max(limit - tracker.inFlight, 1), allowed)
            let slice = messages.prefix(room)
            var notHandedOut: [Int64] = []
            var rewound = false
            for message in slice {
                if !tracker.begin(message.offset, timestamp: message.timestampMilliseconds) {
                    notHandedOut.append(message.offset)
                    rewound = rewound || !alreadyDone.contains(message.offset)
                } else if !alreadyDone.isEmpty, alreadyDone.contains(message.offset) {
                    tracker.complete(message.offset)
                    redeliveriesSkipped += 1
                    notHandedOut.append(message.offset)
                }
            }
            return Taken(count: slice.count, notHandedOut: notHandedOut, rewound: rewound)
        }

        /// `offsets` are done, as `completion`.
        mutating func completed(_ offsets: some Sequence<Int64>, as completion: Completion) {
            var count = 0
            for offset in offsets {
                tracker.complete(offset)
                count += 1
            }
            switch completion {
            case .processed: counters.processed += count
            case .skipped: counters.skipped += count
            case .deadLettered: counters.deadLettered += count
            case .retriedLater: counters.retriedLater += count
            }
        }

        /// A handler call failed (each attempt counts).
        mutating func failedAttempt() {
            counters.failed += 1
        }

        /// The shard crashed with `crash`, unless it had crashed already.
        mutating func crashed(_ crash: ShardCrash) -> CrashAction {
            guard self.crash == nil else { return .alreadyCrashed }
            self.crash = crash
            return .crashNow(crash)
        }

        /// A stop was requested.
        mutating func stop() {
            stopRequested = true
        }

        mutating func lanesStarted(_ count: Int) {
            lanesRunning = count
        }

        /// A lane ended. Returns whether it was the last.
        mutating func laneEnded() -> Bool {
            lanesRunning = max(0, lanesRunning - 1)
            return lanesRunning == 0
        }
    }
}
