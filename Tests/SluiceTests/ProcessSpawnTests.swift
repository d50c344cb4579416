import Foundation
import Sluice
import Testing

@Suite("Child processes: posix_spawn and how they ended")
struct ProcessSpawnTests {
    @Test("a wait status reads as an exit code or a signal (a core dump's flag does not change the signal)")
    func endings() {
        #expect(ProcessSpawn.Ending(waitStatus: 0) == .exit(0))
        #expect(ProcessSpawn.Ending(waitStatus: 3 << 8) == .exit(3))
        #expect(ProcessSpawn.Ending(waitStatus: 255 << 8) == .exit(255))
        #expect(ProcessSpawn.Ending(waitStatus: SIGILL) == .signal(SIGILL))
        #expect(ProcessSpawn.Ending(waitStatus: 0x80 | SIGSEGV) == .signal(SIGSEGV))
    }

    @Test("a spawned child's exit code and signal are what waitpid reports; a missing executable is refused")
    func spawnAndWait() throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let exits = try ProcessSpawn.spawn(
            "/bin/sh", arguments: ["sh", "-c", "exit 7"], environment: [], ownProcessGroup: false,
            actions: &actions)
        #expect(ProcessSpawn.waitForEnding(of: exits) == .exit(7))
        let killed = try ProcessSpawn.spawn(
            "/bin/sh", arguments: ["sh", "-c", "kill -TERM $$"], environment: [], ownProcessGroup: true,
            actions: &actions)
        #expect(ProcessSpawn.waitForEnding(of: killed) == .signal(SIGTERM))
        #expect(throws: ProcessSpawn.Failure.self) {
            try ProcessSpawn.spawn(
                "/nonexistent/sluice", arguments: ["sluice"], environment: [], ownProcessGroup: false,
                actions: &actions)
        }
    }
}
