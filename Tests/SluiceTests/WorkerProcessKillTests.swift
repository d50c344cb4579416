import Foundation
import Testing

@testable import Sluice

@Suite("A worker killed by its supervisor takes its own children with it")
struct WorkerProcessKillTests {
    @Test(
        "a killed worker's child (as the runtime's backtracer is of a worker held in crash handling) ends with it instead of living on as an orphan"
    )
    func killTakesTheGroup() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-child-\(UUID().uuidString)")
            .path
        let (events, continuation) = AsyncStream.makeStream(of: WorkerProcess.Event.self)
        // A "worker" that starts a child of its own and waits, as a process in crash handling waits for its
        // backtracer.
        let worker = try WorkerProcess.spawn(
            slot: 0, executable: "/bin/sh", arguments: ["sh", "-c", "sleep 300 & echo $! > \(file); wait"],
            environment: [:], events: continuation)
        var child: pid_t?
        while child == nil {
            child = (try? String(contentsOfFile: file, encoding: .utf8)).flatMap {
                pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        let grandchild = try #require(child)
        #expect(kill(grandchild, 0) == 0, "the child runs")
        worker.killGroup()
        for await event in events {
            if case .exited(_, let pid, _, let exit) = event, pid == worker.pid {
                #expect(exit == .signal(SIGKILL))
                break
            }
        }
        // The child was killed too: once its new parent reaps it, it is gone (a sleeping orphan would stay).
        var alive = true
        for _ in 0..<500 where alive {
            alive = kill(grandchild, 0) == 0 && !Self.isZombie(grandchild)
            if alive { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(!alive, "the worker's child \(grandchild) ended with it")
    }

    /// Whether `pid` is a zombie (killed, not reaped yet by its new parent).
    static func isZombie(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first == "Z"
    }
}
