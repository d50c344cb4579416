extension Duration {
    /// Whole milliseconds, rounded down (librdkafka's timeouts and `*.ms` properties); saturating, so a
    /// configured duration of years gives `Int64.max` instead of a trap.
    package var milliseconds: Int64 { wholeUnits(perSecond: 1_000) }

    /// Whole nanoseconds, rounded down (atomics holding instants, metrics, handler timeouts); saturating.
    package var nanoseconds: Int64 { wholeUnits(perSecond: 1_000_000_000) }

    /// Seconds as a fraction (rates, ages and delays people read).
    package var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }

    private func wholeUnits(perSecond: Int64) -> Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: perSecond)
        let (sum, overflowSum) = scaled.addingReportingOverflow(attoseconds / (1_000_000_000_000_000_000 / perSecond))
        return overflow || overflowSum ? (seconds < 0 ? .min : .max) : sum
    }
}
