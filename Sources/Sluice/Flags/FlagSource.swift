/// Where flags come from: a file, the admin API, a Kafka topic, a remote flag service.
///
/// A source that fails to load keeps its last good values (the resolver holds them): a failure is
/// logged and counted, never turned into "all off" or "all on".
public protocol FlagSource: Sendable {
    /// The name logs, metrics and the admin API show (`file`, `admin`).
    var name: String { get }
    /// The source's flags now. Throws when they cannot be read; the error names what and where.
    func load() async throws -> [FlagKey: FlagSetting]
    /// Notifications that the flags changed, for sources that can push; nil for sources that are polled.
    var changes: AsyncStream<Void>? { get }
}
