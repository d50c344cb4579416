import Foundation
import SluiceTesting
import Synchronization
import Testing

/// Collects what a process writes to one of its pipes as it comes, on a thread of its own, so the process
/// never blocks on a full pipe and no test blocks a cooperative thread reading it.
final class OutputCollector: Sendable {
    private let state = Mutex<(text: String, ended: Bool)>(("", false))

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                self.state.withLock { $0.text += String(decoding: chunk, as: UTF8.self) }
            }
            self.state.withLock { $0.ended = true }
        }
    }

    /// Everything so far.
    var text: String { state.withLock { $0.text } }
    var ended: Bool { state.withLock { $0.ended } }

    func count(of needle: String) -> Int { text.components(separatedBy: needle).count - 1 }

    /// Waits until `needle` occurs `times` times (true), or `timeout` passes or the pipe ends without it (false).
    func waitFor(_ needle: String, times: Int = 1, timeout: Duration = .seconds(60)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if count(of: needle) >= times { return true }
            if ended { return count(of: needle) >= times }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    /// Everything, once the pipe ended (or `timeout` passed).
    func all(timeout: Duration = .seconds(30)) async -> String {
        let deadline = ContinuousClock.now + timeout
        while !ended, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        return text
    }
}

/// Runs a built executable of this package (`sluice` unless told otherwise). Nothing here blocks a thread:
/// output is collected as it comes and exits are awaited by polling, bounded by a timeout that kills.
struct SluiceProcess {
    /// Started with `posix_spawn`, not Foundation's `Process` (see ``ChildProcess``).
    let process: ChildProcess
    let stdin: FileHandle
    let output: OutputCollector
    let errors: OutputCollector

    static func executable(_ name: String) -> URL {
        // The test bundle sits next to the products of the same build.
        var directory = Bundle.main.bundleURL
        while !FileManager.default.fileExists(atPath: directory.appendingPathComponent(name).path),
            directory.pathComponents.count > 1
        {
            directory.deleteLastPathComponent()
        }
        return directory.appendingPathComponent(name)
    }

    /// How long a process that began the runtime's crash handling (`*** Signal` on standard error) may stay in it
    /// before ``init(_:executable:environment:ownProcessGroup:endHeldCrashHandling:)`` kills it. A backtrace of this
    /// debug build takes about 2 s alone, and took more than 30 s for every death of a full librdkafka 2.16 run
    /// (five services dying at once on two loaded cores): the limit is for a backtracer that never ends.
    static let crashHandlingLimit = Duration.seconds(120)

    /// `endHeldCrashHandling`: kill the process (SIGKILL) when the Swift runtime's crash handling holds it longer
    /// than ``crashHandlingLimit``, as an orchestrator's liveness probe would (its unwinder was seen spinning on a
    /// thread's frame chain for minutes, holding the dying process and its partitions). Its death is in its crash
    /// journal already: Sluice's signal handler runs before the runtime's. Only for a process that is itself the
    /// one that traps (a worker's supervisor has its own 10 s limit, and prints its workers' output).
    init(
        _ arguments: [String], executable: String = "sluice", environment: [String: String]? = nil,
        ownProcessGroup: Bool = false, endHeldCrashHandling: Bool = false
    ) throws {
        let input = try ChildProcess.pipe()
        let stdout = try ChildProcess.pipe()
        let stderr = try ChildProcess.pipe()
        process = try ChildProcess(
            executable: Self.executable(executable).path, arguments: arguments,
            environment: environment.map { ProcessInfo.processInfo.environment.merging($0) { $1 } },
            standardInput: input.read.fileDescriptor, standardOutput: stdout.write.fileDescriptor,
            standardError: stderr.write.fileDescriptor, ownProcessGroup: ownProcessGroup)
        // The child has its ends now: closing ours lets the readers see the end when it exits.
        try input.read.close()
        try stdout.write.close()
        try stderr.write.close()
        stdin = input.write
        output = OutputCollector(stdout.read)
        errors = OutputCollector(stderr.read)
        if endHeldCrashHandling {
            Task { [process, errors] in
                while process.isRunning, !errors.text.contains("*** Signal") {
                    try? await Task.sleep(for: .milliseconds(100))
                }
                let deadline = ContinuousClock.now + Self.crashHandlingLimit
                while process.isRunning, ContinuousClock.now < deadline {
                    try? await Task.sleep(for: .milliseconds(100))
                }
                if process.isRunning {
                    print(
                        "test harness: process \(process.processIdentifier) held in crash handling for \(Self.crashHandlingLimit): killed"
                    )
                    // The runtime's backtracer (a child of the dying process) first: it would run on as an orphan.
                    for child in Self.children(of: process.processIdentifier) { kill(child, SIGKILL) }
                    kill(process.processIdentifier, SIGKILL)
                }
            }
        }
    }

    /// The processes whose parent is `pid` (from /proc).
    static func children(of pid: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let child = pid_t(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            // pid (comm) state ppid ...
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && pid_t(fields[1]) == pid ? child : nil
        }
    }

    /// The first line of standard output, or what came before `timeout`.
    func firstLine(timeout: Duration = .seconds(10)) async -> String {
        _ = await output.waitFor("\n", timeout: timeout)
        return String(output.text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
    }

    /// Waits until standard error contains `text`; returns what it has by then.
    func waitForStandardError(containing text: String, timeout: Duration = .seconds(10)) async -> String {
        _ = await errors.waitFor(text, timeout: timeout)
        return errors.text
    }

    /// Waits for the process to exit and returns its status; after `timeout` it is killed (SIGKILL) and the
    /// result is nil.
    @discardableResult
    func exit(timeout: Duration = .seconds(60)) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline {
                kill(process.processIdentifier, SIGKILL)
                while process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
                return nil
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return process.terminationStatus
    }

    /// Waits for the process to exit (``exit(timeout:)``) and records an issue unless it exited 0, naming its
    /// status and the end of its standard error (a failed `sluice produce` otherwise says only "not 0").
    func expectCleanExit(timeout: Duration = .seconds(60), sourceLocation: SourceLocation = #_sourceLocation) async {
        let status = await exit(timeout: timeout)
        let how = status.map { "exited \($0)" } ?? "was still running after \(timeout) and was killed"
        #expect(
            status == 0,
            "\(process.arguments.first ?? "the process") \(how); standard error ends: \(errors.text.suffix(2_000))",
            sourceLocation: sourceLocation)
    }

    func send(_ line: String) {
        stdin.write(Data((line + "\n").utf8))
    }
}
