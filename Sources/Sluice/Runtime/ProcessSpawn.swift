#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Starting a child process with `posix_spawn` (never `fork` of a multithreaded process) and reading how it
/// ended: what the host's worker processes and SluiceTesting's child processes share.
package enum ProcessSpawn {
    /// The executable of this process, to start it again (as a worker, or under valgrind).
    package static func currentExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `posix_spawn` refused: its error number.
    package struct Failure: Error {
        package let number: Int32
        package var description: String { String(cString: strerror(number)) }
    }

    /// Starts `executable` with `arguments` (the argument vector, its first element included) and
    /// `environment` (`NAME=value` entries), the caller's file `actions` and default signal handling; with `ownProcessGroup`, the child
    /// leads a process group of its own, as a shell's job does (a terminal's Ctrl-C to this process's group does
    /// not reach it). Returns the child's process id.
    package static func spawn(
        _ executable: String, arguments: [String], environment: [String], ownProcessGroup: Bool,
        actions: inout posix_spawn_file_actions_t
    ) throws(Failure) -> pid_t {
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with every signal at its default action and none blocked, as from a shell: an
        // ignored signal stays ignored across exec, and this process ignores some (ServiceLifecycle ignores
        // SIGTERM and SIGINT to handle them itself, a worker ignores SIGPIPE).
        var flags = Int32(POSIX_SPAWN_SETSIGDEF) | Int32(POSIX_SPAWN_SETSIGMASK)
        var everySignal = sigset_t()
        sigfillset(&everySignal)
        posix_spawnattr_setsigdefault(&attributes, &everySignal)
        var noSignal = sigset_t()
        sigemptyset(&noSignal)
        posix_spawnattr_setsigmask(&attributes, &noSignal)
        if ownProcessGroup {
            flags |= Int32(POSIX_SPAWN_SETPGROUP)
            posix_spawnattr_setpgroup(&attributes, 0)
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else { throw Failure(number: result) }
        return pid
    }

    /// How a child ended, from its wait status (`WIFEXITED` and `WTERMSIG` spelled out: the macros do not
    /// import).
    package enum Ending: Equatable, Sendable {
        /// It exited with this code.
        case exit(Int32)
        /// This signal ended it.
        case signal(Int32)

        package init(waitStatus status: Int32) {
            let signal = status & 0x7f
            self = signal == 0 ? .exit((status >> 8) & 0xff) : .signal(signal)
        }
    }

    /// Waits for `pid` to end (blocking: on a thread of its own) and returns how it ended.
    package static func waitForEnding(of pid: pid_t) -> Ending {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        return Ending(waitStatus: status)
    }
}
