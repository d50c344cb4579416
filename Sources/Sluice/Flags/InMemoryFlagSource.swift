import Synchronization

/// Flags set in memory (by the admin API or in tests). Changes are pushed at once.
public final class InMemoryFlagSource: FlagSource {
    public let name: String
    private let flags = Mutex<[FlagKey: FlagSetting]>([:])
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    /// Creates an empty source called `name`.
    public init(name: String = "admin") {
        self.name = name
        (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    public var changes: AsyncStream<Void>? { stream }

    public func load() async throws -> [FlagKey: FlagSetting] { flags.withLock { $0 } }

    /// Sets a flag; a `rate` (messages a second per shard) slows the shards it covers instead of stopping them.
    public func set(_ key: FlagKey, enabled: Bool, reason: String? = nil, rate: Double? = nil) {
        flags.withLock {
            $0[key] = FlagSetting(enabled: rate != nil ? true : enabled, source: name, reason: reason, rate: rate)
        }
        continuation.yield()
    }

    /// Removes a flag, so lower layers decide again.
    public func unset(_ key: FlagKey) {
        flags.withLock { $0[key] = nil }
        continuation.yield()
    }

    /// The flags set here now.
    public var current: [FlagKey: FlagSetting] { flags.withLock { $0 } }
}
