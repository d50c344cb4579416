import Foundation
import Logging
import Metrics
import SluiceKafka
import Synchronization

/// What a host of the group says of itself in the control topic (`host/ID`).
public struct ControlHostStatus: Codable, Equatable, Sendable {
    /// Every control record before this offset is applied on the host.
    public var applied: Int64
    /// When the host wrote this, in milliseconds since the epoch (hosts write every few seconds).
    public var atMilliseconds: Int64
    /// The shards it owns (`topic/partition`) and their states.
    public var shards: [String: String]
    /// The same shards in more detail (pause reasons, lag, counts), refreshed with every heartbeat.
    public var details: [String: ShardReport] = [:]
    /// When the host process started, in milliseconds since the epoch.
    public var startedAtMilliseconds: Int64?
    /// Shard crashes and restarts on the host since it started.
    public var shardCrashes = 0
    public var shardRestarts = 0

    /// Creates a host status.
    public init(
        applied: Int64, atMilliseconds: Int64, shards: [String: String], details: [String: ShardReport] = [:],
        startedAtMilliseconds: Int64? = nil
    ) {
        self.applied = applied
        self.atMilliseconds = atMilliseconds
        self.shards = shards
        self.details = details
        self.startedAtMilliseconds = startedAtMilliseconds
    }

    /// Whether the host wrote this within `window` milliseconds before `now` (ms since the epoch). A record
    /// dated more than a minute ahead of `now` is not live: clocks differ by less, and a forged far-future
    /// heartbeat must not keep a host that is gone counted as live.
    public func isLive(now: Int64, window: Int64) -> Bool {
        let age = now.milliseconds(since: atMilliseconds)
        return age >= -60_000 && age <= window
    }

    /// Seconds since the host wrote this (0 for a time ahead of `now`).
    public func ageSeconds(now: Int64) -> Int64 { max(0, now.milliseconds(since: atMilliseconds) / 1000) }

    /// Seconds since the host process started, when it said.
    public func upSeconds(now: Int64) -> Int64? {
        startedAtMilliseconds.map { max(0, now.milliseconds(since: $0) / 1000) }
    }

    enum CodingKeys: String, CodingKey {
        case applied
        case atMilliseconds = "atMillis"
        case shards, details
        case startedAtMilliseconds = "startedAtMillis"
        case shardCrashes, shardRestarts
    }

    /// Reads a host record's fields, each checked against ``InputLimits``: `applied`, `atMillis` and the shard
    /// table are state and refused when wrong; the details are a report, and a detail that cannot be read is
    /// left out.
    public init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: CodingKeys.self)
        let applied = try fields.requiredInteger(.applied, in: InputLimits.offsets)
        let at = try fields.requiredInteger(.atMilliseconds, in: InputLimits.epochMilliseconds)
        var shards: [String: String] = [:]
        if fields.contains(.shards) {
            guard let table = try? fields.decode([String: String].self, forKey: .shards),
                table.allSatisfy({ $0.key.count <= InputLimits.identityLength && $0.value.count <= 32 })
            else {
                throw FieldRefused(.field, "'shards' maps TOPIC/PARTITION to a state name")
            }
            guard table.count <= InputLimits.shardsPerHost else {
                throw FieldRefused(.range, "'shards' has more than \(InputLimits.shardsPerHost) entries")
            }
            shards = table
        }
        self.init(applied: applied, atMilliseconds: at, shards: shards)
        startedAtMilliseconds = try fields.integer(.startedAtMilliseconds, in: InputLimits.epochMilliseconds)
        shardCrashes = try fields.count(.shardCrashes, in: InputLimits.counts) ?? 0
        shardRestarts = try fields.count(.shardRestarts, in: InputLimits.counts) ?? 0
        if fields.contains(.details) {
            guard let details = try? fields.decode([String: Lenient<ShardReport>].self, forKey: .details) else {
                throw FieldRefused(.field, "'details' must be an object of TOPIC/PARTITION keys")
            }
            guard details.count <= InputLimits.shardsPerHost else {
                throw FieldRefused(.range, "'details' has more than \(InputLimits.shardsPerHost) entries")
            }
            self.details = details.compactMapValues(\.value)
        }
    }
}
