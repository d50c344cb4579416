import Foundation
import Logging
import Metrics
import SluiceKafka
import Synchronization

/// The control plane's flags as a flag source: the group's control topic, read to its end before the host
/// fetches anything and then tailed, pushing each change at once. Bad records are logged, counted and
/// skipped; the flags they would have changed keep their state.
public final class ControlPlaneFlagSource: FlagSource {
    /// The source's name in flag settings and errors: `control`.
    public let name = "control"
    /// The control topic.
    public let topic: String
    private final class Table: Sendable {
        let flags = Mutex<[FlagKey: FlagSetting]>([:])
        let trips = Mutex<[TopicPartition: ControlRecord.Trip]>([:])
        let hosts = Mutex<[String: ControlHostStatus]>([:])
        let quarantines = Mutex<[TopicPartition: Quarantine]>([:])
        /// Commands read, with their offsets (the latest 1,000).
        let commands = Mutex<[(offset: Int64, command: ControlCommand)]>([])
        /// The position when the flag resolver last loaded the flags: the host's supervisor has those.
        let loadedPosition = Mutex<Int64>(0)
        /// Times the topic was found recreated.
        let recreations = Atomic<Int>(0)

        /// Drops everything read from a control topic that was deleted and created again: the new topic is
        /// read from its beginning into empty tables.
        func clear() {
            flags.withLock { $0.removeAll() }
            trips.withLock { $0.removeAll() }
            hosts.withLock { $0.removeAll() }
            quarantines.withLock { $0.removeAll() }
            commands.withLock { $0.removeAll() }
            loadedPosition.withLock { $0 = 0 }
        }
    }

    private let table = Table()
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    private let reader: ControlTopicReader
    private let rejections: ControlRejections
    /// What ``waitUntilApplied(_:timeout:)`` polls on: real time (a host hands in its own clock).
    private let clock: any HostClock

    /// The default control topic of a group.
    public static func defaultTopic(group: String) -> String { "__sluice-control-\(group)" }

    /// Whether this group's records must be signed (keys are configured).
    public let verifies: Bool

    /// Creates the source; nothing is read before ``load(timeout:)``. With `keys`, a record is applied only
    /// when signed by a role that may write it (``ControlKeys``); without, every well-formed record is.
    /// `clock`: real time, on which waits for records to be applied are timed (a host hands in its own).
    public init(
        bootstrapServers: String, topic: String, properties: [String: String] = [:], keys: ControlKeys? = nil,
        clock: any HostClock = SystemHostClock(name: "sluice-control-timers"),
        metricsFactory: any MetricsFactory = MetricsSystem.factory, logger: Logger
    ) throws {
        self.topic = topic
        self.clock = clock
        self.verifies = keys != nil
        (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let table = self.table
        let continuation = self.continuation
        let rejections = ControlRejections(topic: topic, metricsFactory: metricsFactory, logger: logger)
        self.rejections = rejections
        reader = try ControlTopicReader(
            bootstrapServers: bootstrapServers, topic: topic, properties: properties, logger: logger,
            onRecreated: { _, _ in
                table.clear()
                table.recreations.add(1, ordering: .relaxed)
                continuation.yield()
            },
            onRecord: { record in
                do throws(ControlRecordRejected) {
                    if let keys, ControlSigner.allowed(key: record.key, value: record.value) != nil {
                        _ = try keys.verify(
                            topic: topic, key: record.key, value: record.value, headers: record.headers,
                            offset: record.offset)
                    }
                    switch try ControlRecord.parse(key: record.key, value: record.value, offset: record.offset) {
                    case .flag(let key, let enabled, let reason, let who, let rate):
                        table.flags.withLock {
                            $0[key] = enabled.map {
                                FlagSetting(enabled: $0, source: "control", reason: reason, rate: rate, who: who)
                            }
                        }
                        continuation.yield()
                    case .trip(let topicPartition, let trip):
                        table.trips.withLock { $0[topicPartition] = trip }
                    case .host(let identity, let status):
                        table.hosts.withLock { $0[identity] = status }
                    case .quarantine(let topicPartition, let quarantine):
                        let problem = table.quarantines.withLock { quarantines -> String? in
                            if let problem = quarantine?.releaseProblem(over: quarantines[topicPartition]) {
                                return problem
                            }
                            quarantines[topicPartition] = quarantine
                            return nil
                        }
                        if let problem {
                            throw ControlRecordRejected(
                                key: record.key, offset: record.offset, reason: .release, detail: problem)
                        }
                    case .command(_, let command?):
                        table.commands.withLock { commands in
                            commands.append((record.offset, command))
                            if commands.count > 1_000 { commands.removeFirst(commands.count - 1_000) }
                        }
                    case .command(_, nil):
                        return
                    case nil:
                        return
                    }
                } catch {
                    rejections.record(error)
                }
            })
    }

    /// Reads the control topic to its end (records written before now all applied). Throws when it cannot
    /// within `timeout`: a host does not fetch without its control state.
    public func load(timeout: Duration) async throws {
        do {
            try await reader.load(timeout: timeout)
        } catch {
            throw SluiceError(
                code: .state,
                message:
                    "control topic '\(topic)' could not be read: \(error.message); the host does not fetch without it")
        }
    }

    /// Yields when a flag record changed a flag.
    public var changes: AsyncStream<Void>? { stream }

    /// The control plane's flags now.
    public func load() async throws -> [FlagKey: FlagSetting] {
        // The reader's position is updated after each record's table change: read it first, so what is
        // reported as loaded is never ahead of the flags handed out.
        let position = reader.position
        let flags = table.flags.withLock { $0 }
        table.loadedPosition.withLock { $0 = max($0, position) }
        return flags
    }

    /// The control plane's setting of one flag key (nil: not set there).
    public func flag(_ key: FlagKey) -> FlagSetting? { table.flags.withLock { $0[key] } }

    /// Every control record before this offset was loaded into the host's flags.
    public var loadedPosition: Int64 { table.loadedPosition.withLock { $0 } }

    /// Control records refused since the host started (each logged once, counted by reason, and ignored: what
    /// it would have changed keeps its last good state), and the latest of them.
    public var rejected: (count: Int, latest: [ControlRecordRejected]) { rejections.snapshot }

    /// How many times the control topic turned out to be another one than was read (deleted and created
    /// again): each time the tables were emptied and the topic read from its beginning.
    public var topicRecreations: Int { table.recreations.load(ordering: .relaxed) }

    /// What every host of the group last said of itself.
    public var hosts: [String: ControlHostStatus] { table.hosts.withLock { $0 } }

    /// The group-wide trip of a partition, if its breaker holds it.
    func trip(for topicPartition: TopicPartition) -> ControlRecord.Trip? { table.trips.withLock { $0[topicPartition] } }

    /// The group's tripped shards.
    public var trips: [TopicPartition: ControlRecord.Trip] { table.trips.withLock { $0 } }

    /// Commands read at or after `offset`, in order (the latest 1,000).
    public func commands(from offset: Int64) -> [(offset: Int64, command: ControlCommand)] {
        table.commands.withLock { $0.filter { $0.offset >= offset } }
    }

    /// One partition's quarantine, if any (without copying the whole table).
    func quarantine(for topicPartition: TopicPartition) -> Quarantine? {
        table.quarantines.withLock { $0[topicPartition] }
    }

    /// The group's quarantined (or counted) messages.
    public var quarantines: [TopicPartition: Quarantine] { table.quarantines.withLock { $0 } }

    /// Waits until the record at `offset` is applied, at most `timeout`; returns whether it is.
    func waitUntilApplied(_ offset: Int64, timeout: Duration) async -> Bool {
        let deadline = clock.now + timeout
        while reader.position <= offset {
            guard clock.now < deadline else { return false }
            try? await clock.sleep(until: clock.now + .milliseconds(10))
        }
        return true
    }

    /// The offset of the next control record to read: every record before it is applied.
    public var appliedPosition: Int64 { reader.position }

    /// Waits until every control record written before this call is applied: a host taking over partitions
    /// acts on the group's latest flags, trips and quarantines, not on a reader that lags (a quarantine the
    /// partition's last owner published just before). Returns false when that did not happen within
    /// `timeout`; the host then goes on with what it has.
    func catchUp(timeout: Duration) async -> Bool {
        guard let end = try? await reader.endOffset(timeout: timeout) else { return false }
        return await waitUntilApplied(end - 1, timeout: timeout)
    }

    /// Stops tailing.
    public func close() async { await reader.close() }
}
