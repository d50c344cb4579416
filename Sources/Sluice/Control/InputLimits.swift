import Foundation

/// The ranges a value from outside the process must be in before anything is computed from it. Every bound is far
/// beyond what a real host writes and far enough from the integer limits that sums and differences of two
/// such values cannot overflow (docs/architecture.md, "Trust boundaries").
public enum InputLimits {
    /// Kafka offsets: 0 up to 2⁶² (Kafka's own are below 2⁶³; no partition holds 2⁶² records).
    public static let offsets: ClosedRange<Int64> = 0...(1 << 62)
    /// Milliseconds since the epoch: 1970 up to the year 9999.
    public static let epochMilliseconds: ClosedRange<Int64> = 0...253_402_300_799_999
    /// Counters a host reports (messages processed, crashes, restarts): 0 up to 2⁵³.
    public static let counts: ClosedRange<Int64> = 0...(1 << 53)
    /// Messages one quarantine may cover (one handler call, or the calls in flight at an unattributed death).
    /// A host bounds it further by the topic's `maxInFlight`.
    public static let quarantineSpan: ClosedRange<Int64> = 1...1_000_000
    /// Seconds a host reports (a next probe): 0 up to a century.
    public static let seconds: ClosedRange<Double> = 0...3_155_760_000
    /// Characters of a host identity, a signal name or a shard key.
    public static let identityLength = 256
    /// Characters of a reason, an operator name or an error text.
    public static let textLength = 4_096
    /// Characters of a crash report.
    public static let reportLength = 65_536
    /// Entries of a host's shard table.
    public static let shardsPerHost = 100_000
}
