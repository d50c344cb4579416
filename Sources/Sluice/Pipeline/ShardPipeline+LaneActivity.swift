import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// What a lane is doing, for the watchdog and stall reports.
extension ShardPipeline {
    /// What a lane is doing, readable by the watchdog without the pipeline's lock.
    final class LaneActivity: Sendable {
        /// When the current handler call started (``MonotonicNanoseconds``); 0 while idle.
        let since = Atomic<Int64>(0)
        /// The first offset of the current call.
        let offset = Atomic<Int64>(-1)
        /// Offsets this lane completed that are not in the watermark yet (a lock only this lane and a
        /// final flush take).
        let completed = Mutex<[Int64]>([])
        /// The lane's crash journal slot: taken with the pipeline (which is run once made), bound to the lane's
        /// task when it starts, freed when the lane ends.
        let journal: JournalSlot?
        /// What the lane waits on or does (``Phase``), for a stall report.
        let phase = Atomic<UInt8>(Phase.starting.rawValue)

        init(journal: JournalSlot?) { self.journal = journal }

        enum Phase: UInt8, CaseIterable {
            case starting, waitingForWork, processing, carefulGate, quarantineHold, deadLetter, backoff, ended
        }

        func enter(_ phase: Phase) { self.phase.store(phase.rawValue, ordering: .relaxed) }

        /// A handler call (or, with `handler: false`, Sluice's own work such as a dead-letter write) begins.
        func begin(
            _ offset: Int64, timestamp: Int64?, at nanoseconds: Int64, count: Int = 1, handler: Bool = true,
            careful: Bool = false
        ) {
            if handler, let journal { journal.begin(offset, count: count, careful: careful, timestamp: timestamp) }
            self.offset.store(offset, ordering: .relaxed)
            since.store(max(1, nanoseconds), ordering: .releasing)
        }

        func end() {
            journal?.end()
            since.store(0, ordering: .releasing)
        }

        /// The current handler call (when it started, its first offset), or nil while idle.
        var call: HandlerWatchdog.Call? {
            let started = since.load(ordering: .acquiring)
            guard started != 0 else { return nil }
            return HandlerWatchdog.Call(started: started, offset: offset.load(ordering: .relaxed))
        }
    }
}
