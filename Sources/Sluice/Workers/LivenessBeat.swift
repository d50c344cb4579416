#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A worker's heartbeat to its supervisor: a byte on the liveness pipe every `interval`, from a thread of its own,
/// while `healthy()` says the host's loops turn. A worker that hangs (its loops stuck, or the whole process held
/// in the runtime's crash handling, which suspends every thread) stops beating and is killed and replaced. When
/// the supervisor is gone (the pipe is closed), `orphaned` runs once: the worker drains and exits rather than
/// consume on, unsupervised.
enum LivenessBeat {
    static func start(
        descriptor: Int32, interval: Duration = .milliseconds(500), healthy: @escaping @Sendable () -> Bool,
        orphaned: @escaping @Sendable () -> Void
    ) {
        // A write to a pipe whose reader is gone raises SIGPIPE, which ends the process by default: here it
        // must be an error the worker handles.
        signal(SIGPIPE, SIG_IGN)
        let pause = timespec(
            tv_sec: Int(interval.components.seconds),
            tv_nsec: Int(interval.components.attoseconds / 1_000_000_000))
        startThread(named: "sluice-liveness") {
            var byte: UInt8 = 1
            while true {
                var request = pause
                var remaining = timespec()
                while nanosleep(&request, &remaining) != 0, errno == EINTR { request = remaining }
                guard healthy() else { continue }
                if write(descriptor, &byte, 1) < 0, errno != EINTR, errno != EAGAIN {
                    orphaned()
                    return
                }
            }
        }
    }
}
