#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The monotonic clock as plain nanoseconds, for timing every handler call. `ContinuousClock`'s instants
/// and durations are 128-bit attoseconds: subtracting two and reading the nanoseconds, three times per
/// message, was 4 % of the handler threads' samples in `sluice bench` case c.
enum MonotonicNanoseconds {
    @inline(__always)
    static func now() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) &* 1_000_000_000 &+ Int64(time.tv_nsec)
    }
}
