/// Arithmetic on values that came from outside the process (offsets, times, counts in control records, commit
/// metadata, requests), in one place. Decoders bound such values by ``InputLimits`` first; these never trap
/// even when a bound is missed, clamping at the type's limits instead (in Swift an overflow is a trap, and a
/// trap here would stop every shard of the process).
extension Int64 {
    /// `self + other`, clamped to `Int64.min...Int64.max`.
    public func adding(saturating other: Int64) -> Int64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? (other > 0 ? .max : .min) : sum
    }

    /// `self - other`, clamped to `Int64.min...Int64.max`.
    public func subtracting(saturating other: Int64) -> Int64 {
        let (difference, overflow) = subtractingReportingOverflow(other)
        return overflow ? (other < 0 ? .max : .min) : difference
    }

    /// The milliseconds from `earlier` to `self`, clamped (a time in the future gives a negative age).
    public func milliseconds(since earlier: Int64) -> Int64 { subtracting(saturating: earlier) }
}
