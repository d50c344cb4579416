import Crdkafka
import Logging
import Synchronization

/// Facts about the librdkafka library Sluice is linked against.
public enum Librdkafka {
    /// The version string, for example `2.0.2`.
    public static var version: String { String(cString: rd_kafka_version_str()) }

    /// The version as a number `0xMMmmrrpp`, as `rd_kafka_version()` returns it.
    public static var versionNumber: Int { Int(rd_kafka_version()) }

    /// A known defect of a librdkafka version that Sluice's Kafka layer guards against.
    public struct Hazard: Sendable, Hashable, CustomStringConvertible {
        /// Short name.
        public let name: String
        /// The first librdkafka version that has the fix, as `0xMMmmrrpp`.
        public let fixedIn: Int
        /// What goes wrong and how Sluice avoids it.
        public let summary: String
        public var description: String { "\(name): \(summary)" }
    }

    /// The hazards Sluice guards against, with the versions that fixed them upstream.
    public static let knownHazards: [Hazard] = [
        Hazard(
            name: "resume-rewinds",
            fixedIn: 0x0204_00ff,
            summary: "resuming a partition that is not paused rewinds its fetch position to where it was assigned; "
                + "Sluice tracks pause state and never resumes what is not paused"
        ),
        Hazard(
            name: "close-during-first-rebalance",
            fixedIn: 0x0203_00ff,
            summary: "closing a cooperative-sticky consumer during its first rebalance aborts the process; "
                + "Sluice waits for the first assignment before it closes"
        ),
        Hazard(
            name: "batch-consume-races",
            fixedIn: 0x0201_00ff,
            summary: "batch consume is unsafe while pause, resume, seek or a rebalance run in parallel; "
                + "one owner thread per consumer makes all of these calls"
        ),
        Hazard(
            name: "poll-after-poll-set-consumer",
            fixedIn: Int.max,
            summary: "rd_kafka_poll on a consumer whose main queue is redirected asserts; Sluice never calls it"
        ),
        Hazard(
            name: "poll-resets-max-poll-interval",
            fixedIn: Int.max,
            summary: "any queue poll resets max.poll.interval.ms, so librdkafka does not notice a stuck handler; "
                + "the host watches handlers itself"
        ),
        Hazard(
            name: "commit-during-join-loses-assignment",
            fixedIn: 0x020a_00ff,
            summary: "a commit made while the member waits for its JoinGroup answer is answered ILLEGAL_GENERATION "
                + "and the whole assignment is declared lost (librdkafka #4059), so the next owner handles it again; "
                + "Sluice follows the group's join state (debug context cgrp) and holds commits while it joins"
        ),
        Hazard(
            name: "queue-threshold-fetch-stall",
            fixedIn: 0x0202_00ff,
            summary: "a partition queue past queued.min.messages stops fetching for up to 1 s; "
                + "Sluice drains queues into its own bounded buffers and pauses full partitions instead"
        ),
    ]

    /// The hazards that apply to the linked version.
    public static var activeHazards: [Hazard] { knownHazards.filter { versionNumber < $0.fixedIn } }

    /// Whether the linked version has the hazard called `name`.
    static func has(_ name: String) -> Bool { activeHazards.contains { $0.name == name } }

    private static let logged = Atomic<Bool>(false)

    /// Logs the linked version once per process, with a warning naming the hazards it has.
    static func logVersionOnce(_ logger: Logger) {
        guard !logged.exchange(true, ordering: .relaxed) else { return }
        let hazards = activeHazards
        if hazards.isEmpty {
            logger.info("librdkafka version", metadata: ["librdkafka.version": "\(version)"])
        } else {
            logger.warning(
                "librdkafka version has known defects that Sluice guards against",
                metadata: [
                    "librdkafka.version": "\(version)",
                    "librdkafka.hazards": "\(hazards.map(\.name).joined(separator: ","))",
                ]
            )
        }
    }
}
