#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A file descriptor that an owner thread sleeps on and that librdkafka and Swift code write to
/// wake it: the read end of a non-blocking pipe.
///
/// librdkafka writes ``payload`` to the write end when one of its queues goes from empty to non-empty
/// (`rd_kafka_queue_io_event_enable`); Swift code calls ``wake()``. A full pipe is as good as a
/// written one: the owner only needs to know that something happened.
///
/// `@unchecked Sendable`: the descriptors are immutable after init; `write(2)` and `poll(2)` on them
/// are safe from any thread, and only the owner thread reads.
final class Waker: @unchecked Sendable {
    /// The write end, handed to librdkafka.
    let fileDescriptor: Int32
    private let readDescriptor: Int32
    /// The byte librdkafka writes.
    let payload: [UInt8] = [1]

    init() {
        var descriptors: [Int32] = [0, 0]
        precondition(pipe(&descriptors) == 0, "pipe failed: \(errno)")
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        readDescriptor = descriptors[0]
        fileDescriptor = descriptors[1]
    }

    /// Wakes the owner thread if it sleeps in ``wait(milliseconds:)``; otherwise its next wait returns at once.
    func wake() {
        var one: UInt8 = 1
        _ = write(fileDescriptor, &one, 1)
    }

    /// Sleeps until woken or `milliseconds` pass (-1: forever), then clears every wake-up.
    func wait(milliseconds: Int32) {
        var descriptor = pollfd(fd: readDescriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, milliseconds) > 0 else { return }
        var scratch = [UInt8](repeating: 0, count: 256)
        while read(readDescriptor, &scratch, scratch.count) == scratch.count {}
    }

    deinit {
        close(readDescriptor)
        close(fileDescriptor)
    }
}

extension Waker {
    /// Sleeps the calling (owner) thread.
    static func sleep(milliseconds: Int) {
        usleep(useconds_t(milliseconds * 1000))
    }
}
