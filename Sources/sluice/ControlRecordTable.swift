import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The control topic's state as the CLI reads it.
final class RecordTable: Sendable {
    struct Flag: Sendable {
        var enabled: Bool
        var reason: String?
        var who: String?
        var rate: Double?
    }

    private let state = Mutex<
        (
            flags: [FlagKey: Flag], trips: [TopicPartition: ControlRecord.Trip], hosts: [String: ControlHostStatus],
            quarantines: [TopicPartition: Quarantine], bad: Int, history: [(offset: Int64, flag: Flag?)]
        )
    >(([:], [:], [:], [:], 0, []))
    /// A flag whose every value is kept with its offset (a write's "before", read after the write).
    private let watched: FlagKey?

    /// With keys, a record is applied only when its signature verifies (as on the hosts).
    private let verifier = Mutex<(keys: ControlKeys, topic: String)?>(nil)

    init(watching key: FlagKey? = nil) { watched = key }

    func verify(with keys: ControlKeys, topic: String) { verifier.withLock { $0 = (keys, topic) } }

    /// The watched flag's value before the record at `offset`.
    func watchedFlag(before offset: Int64) -> Flag? {
        state.withLock { state in state.history.last { $0.offset < offset }?.flag }
    }

    func apply(_ record: ControlTopicReader.Record) {
        state.withLock { state in
            let parsed: ControlRecord?
            do {
                if let (keys, topic) = verifier.withLock({ $0 }),
                    ControlSigner.allowed(key: record.key, value: record.value) != nil
                {
                    _ = try keys.verify(
                        topic: topic, key: record.key, value: record.value, headers: record.headers,
                        offset: record.offset)
                }
                parsed = try ControlRecord.parse(key: record.key, value: record.value, offset: record.offset)
            } catch {
                state.bad += 1
                return
            }
            switch parsed {
            case .flag(let key, let enabled, let reason, let who, let rate)?:
                state.flags[key] = enabled.map { Flag(enabled: $0, reason: reason, who: who, rate: rate) }
                if key == watched { state.history.append((record.offset, state.flags[key])) }
            case .trip(let topicPartition, let trip)?: state.trips[topicPartition] = trip
            case .host(let identity, let status)?: state.hosts[identity] = status
            case .quarantine(let topicPartition, let quarantine)?: state.quarantines[topicPartition] = quarantine
            case .command?, nil: break
            }
        }
    }

    var flags: [FlagKey: Flag] { state.withLock { $0.flags } }
    var trips: [TopicPartition: ControlRecord.Trip] { state.withLock { $0.trips } }
    var hosts: [String: ControlHostStatus] { state.withLock { $0.hosts } }
    var quarantines: [TopicPartition: Quarantine] { state.withLock { $0.quarantines } }
    var bad: Int { state.withLock { $0.bad } }
}
