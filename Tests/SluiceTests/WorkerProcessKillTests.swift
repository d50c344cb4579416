import Foundation
import Testing

@testable import Sluice

@Suite("A worker killed by its supervisor takes its own children with it")
struct WorkerProcessKillTests {
    @Test(
        "a killed worker's child (as the runtime's backtracer is of a worker held in crash handling) ends with it instead of living on as an orphan"
    )
    func killTakesTheGroup() async throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-child-\(UUID().uuidString)")
            .path
        let (lock, ready) = (base + ".lock", base + ".ready")
        _ = FileManager.default.createFile(atPath: lock, contents: nil)
        let (events, continuation) = AsyncStream.makeStream(of: WorkerProcess.Event.self)
        // A "worker" that starts a child of its own and waits, as a process in crash handling waits for its
        // backtracer. The child holds a lock on a file while it lives: whether it ended is told by the lock, not
        // by its process id, which this busy machine reuses within seconds.
        let worker = try WorkerProcess.spawn(
            slot: 0, executable: "/bin/sh",
            arguments: ["sh", "-c", "flock \(lock) sh -c 'echo held > \(ready); exec sleep 300' & wait"],
            environment: [:], events: continuation)
        while !FileManager.default.fileExists(atPath: ready) { try await Task.sleep(for: .milliseconds(10)) }
        let descriptor = open(lock, O_RDONLY | O_CLOEXEC)
        defer { close(descriptor) }
        #expect(flock(descriptor, LOCK_EX | LOCK_NB) != 0, "the child holds the lock")
        worker.killGroup()
        for await event in events {
            if case .exited(_, let pid, _, let exit) = event, pid == worker.pid {
                #expect(exit == .signal(SIGKILL))
                break
            }
        }
        // The child was killed too: its lock goes with it (an orphan would hold it for ever).
        var released = false
        for _ in 0..<500 where !released {
            released = flock(descriptor, LOCK_EX | LOCK_NB) == 0
            if !released { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(released, "the worker's child ended with it")
    }
}
