import Foundation
import Sluice
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A child process started with `posix_spawn`, for tests that run executables (the `sluice` CLI, a service,
/// a broker, a browser).
///
/// Foundation's `Process.run()` on Linux reads `/proc/self/fd` with a 256-byte copy of each directory entry
/// and crashes now and then when an entry sits at the end of glibc's buffer (swift-corelibs-foundation
/// PR #5472, in Swift 6.3.1): a fresh-clone run of this suite died of it in `Process.run()`. This starts the
/// child without that read: every descriptor above 2 is closed in the child (`closefrom`), and the pipes it
/// makes are close-on-exec in this process.
///
/// The exit is reaped by a thread of its own; nothing here blocks a caller's thread.
public final class ChildProcess: Sendable {
    /// How the child ended.
    public enum TerminationReason: Sendable, Equatable {
        /// It exited; ``terminationStatus`` is its status.
        case exit
        /// A signal ended it; ``terminationStatus`` is the signal.
        case uncaughtSignal
    }

    /// The child's process id.
    public let processIdentifier: Int32
    /// What it was started with.
    public let executable: String
    public let arguments: [String]
    private let ending = Mutex<(status: Int32, reason: TerminationReason)?>(nil)

    /// Starts `executable` with `arguments` and `environment` (nil: this process's). The child's standard input,
    /// output and error are the given descriptors (nil: /dev/null); this process keeps its own copies.
    /// `ownProcessGroup`: the child leads a process group of its own, as a shell's job does, for
    /// ``interruptGroup()``; otherwise it is in this process's group (a Ctrl-C of the test run reaches it).
    public init(
        executable: String, arguments: [String], environment: [String: String]? = nil,
        standardInput: Int32? = nil, standardOutput: Int32? = nil, standardError: Int32? = nil,
        ownProcessGroup: Bool = false
    ) throws {
        self.executable = executable
        self.arguments = arguments
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (descriptor, target) in [(standardInput, Int32(0)), (standardOutput, 1), (standardError, 2)] {
            if let descriptor {
                posix_spawn_file_actions_adddup2(&actions, descriptor, target)
            } else {
                posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            }
        }
        if let closeFrom = Self.closeFrom { _ = closeFrom(&actions, 3) }
        let environment = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let pid: pid_t
        do {
            pid = try ProcessSpawn.spawn(
                executable, arguments: [executable] + arguments, environment: environment,
                ownProcessGroup: ownProcessGroup, actions: &actions)
        } catch {
            throw CocoaError(
                .fileReadUnknown,
                userInfo: [NSLocalizedDescriptionKey: "posix_spawn \(executable): \(error.description)"])
        }
        processIdentifier = pid
        Thread.detachNewThread { [self] in
            let ended: (Int32, TerminationReason) =
                switch ProcessSpawn.waitForEnding(of: pid) {
                case .exit(let code): (code, .exit)
                case .signal(let signal): (signal, .uncaughtSignal)
                }
            self.ending.withLock { $0 = ended }
        }
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), which Swift's Glibc module does not
    /// export.
    private static let closeFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? =
        {
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
            else { return nil }
            return unsafeBitCast(
                symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
        }()

    /// Whether it still runs (it has not been reaped).
    public var isRunning: Bool { ending.withLock { $0 == nil } }
    /// Its exit status, or the signal that ended it; 0 while it runs.
    public var terminationStatus: Int32 { ending.withLock { $0?.status ?? 0 } }
    /// How it ended; `.exit` while it runs.
    public var terminationReason: TerminationReason { ending.withLock { $0?.reason ?? .exit } }

    /// Sends SIGTERM.
    public func terminate() { kill(processIdentifier, SIGTERM) }

    /// SIGINT to the child's process group (started with `ownProcessGroup`): what Ctrl-C in a terminal does to
    /// a job (the child and whatever it started in its group).
    public func interruptGroup() { kill(-processIdentifier, SIGINT) }

    /// Waits for the exit, polling, without holding a thread.
    public func waitForExit() async {
        while isRunning { try? await Task.sleep(for: .milliseconds(10)) }
    }

    /// A pipe whose ends are close-on-exec in this process (the child gets its end through `dup2`; children
    /// started here close every other descriptor anyway).
    public static func pipe() throws -> (read: FileHandle, write: FileHandle) {
        var descriptors: [Int32] = [0, 0]
        guard Glibc.pipe(&descriptors) == 0 else {
            throw CocoaError(
                .fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "pipe: \(String(cString: strerror(errno)))"])
        }
        for descriptor in descriptors { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        return (
            FileHandle(fileDescriptor: descriptors[0], closeOnDealloc: true),
            FileHandle(fileDescriptor: descriptors[1], closeOnDealloc: true)
        )
    }
}
