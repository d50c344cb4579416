import CSluiceCrash
import Crdkafka
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A mutex with one condition variable whose timed waits run on the monotonic clock, so a wall-clock
/// step does not shorten or stretch them. For Sluice's own threads, which wait outside Swift's
/// cooperative pool.
final class MonotonicCondition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        #if !canImport(Darwin)
            pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        #endif
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits for a signal, or until `timeout` passed (nil: no limit). Call with the lock held.
    func wait(timeout: Duration?) {
        guard let timeout else {
            pthread_cond_wait(condition, mutex)
            return
        }
        #if canImport(Darwin)
            var relative = timespec(timeout)
            pthread_cond_timedwait_relative_np(condition, mutex, &relative)
        #else
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let (seconds, attoseconds) = timeout.components
            var nanoseconds = Int(now.tv_nsec) + Int(attoseconds / 1_000_000_000)
            var wholeSeconds = Int(now.tv_sec) + Int(min(seconds, Int64(Int32.max)))
            wholeSeconds += nanoseconds / 1_000_000_000
            nanoseconds %= 1_000_000_000
            var deadline = timespec(tv_sec: wholeSeconds, tv_nsec: nanoseconds)
            pthread_cond_timedwait(condition, mutex, &deadline)
        #endif
    }

    func signal() { pthread_cond_signal(condition) }

    func broadcast() { pthread_cond_broadcast(condition) }
}

#if canImport(Darwin)
    extension timespec {
        fileprivate init(_ duration: Duration) {
            let (seconds, attoseconds) = duration.components
            self.init(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        }
    }
#endif

/// Starts a named thread running `body`. `sluiceCode`: it runs only Sluice's own code, so a fatal signal on
/// it is never blamed on a message (docs/architecture.md §12).
func startThread(named name: String, sluiceCode: Bool = true, _ body: @escaping @Sendable () -> Void) {
    // Linux threads inherit their creator's name, and Foundation's `Thread.name` does not reach the kernel.
    let thread = Thread {
        sluice_set_thread_name(name)
        if sluiceCode { sluice_crash_mark_sluice_thread() }
        body()
    }
    thread.start()
}
