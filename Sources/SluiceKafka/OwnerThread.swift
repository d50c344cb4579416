import Crdkafka
import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Starts the dedicated OS threads that own librdkafka handles, and runs blocking librdkafka calls
/// on Dispatch worker threads, never on Swift's cooperative pool.
enum OwnerThread {
    /// Runs `body` on a new detached thread named `name`.
    static func start(name: String, _ body: @escaping @Sendable () -> Void) {
        final class Box {
            let name: String
            let body: @Sendable () -> Void
            init(name: String, body: @escaping @Sendable () -> Void) {
                self.name = name
                self.body = body
            }
        }
        let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        defer { pthread_attr_destroy(&attributes) }
        var thread = pthread_t()
        let result = pthread_create(
            &thread,
            &attributes,
            { argument in
                let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
                // Visible in `top -H`, perf and debuggers; Linux allows 15 characters.
                sluice_set_thread_name(box.name)
                box.body()
                return nil
            },
            box
        )
        precondition(result == 0, "pthread_create failed: \(result)")
    }

    /// Runs a blocking call off the cooperative pool and returns its result.
    static func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try body() })
            }
        }
    }
}
