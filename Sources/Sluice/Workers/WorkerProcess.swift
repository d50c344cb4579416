#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A worker process of a supervising host: this executable started again (`posix_spawn`, never `fork` of a
/// multithreaded process) with the same arguments, the environment plus ``WorkerEnvironment``'s variables,
/// and a pipe at descriptor 3 for its heartbeats. Two threads of the supervisor watch it: one reads the
/// heartbeats, one waits for its exit (threads of their own: they block in `read` and `waitpid`); each reports
/// through `events`.
struct WorkerProcess: Sendable {
    /// What a worker's threads report.
    enum Event: Sendable {
        case beat(slot: Int, pid: Int32)
        case exited(slot: Int, pid: Int32, status: String, exit: WorkerSlot.Exit)
    }

    let slot: Int
    let pid: Int32

    /// Starts the worker of `slot`; throws naming the call that failed.
    static func spawn(
        slot: Int, executable: String, arguments: [String], environment: [String: String],
        events: AsyncStream<Event>.Continuation
    ) throws(SluiceError) -> WorkerProcess {
        var pipeEnds: [Int32] = [-1, -1]
        guard pipe(&pipeEnds) == 0 else { throw failure("pipe", errno) }
        let (readEnd, writeEnd) = (pipeEnds[0], pipeEnds[1])
        // Close-on-exec: no other process this one starts keeps the pipe (pipe2 is not in Glibc's module).
        for end in pipeEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 onto 3 clears close-on-exec there; every other descriptor of ours stays closed in the worker.
        posix_spawn_file_actions_adddup2(&actions, writeEnd, WorkerEnvironment.livenessDescriptor)
        var environment = environment
        environment[WorkerEnvironment.slotVariable] = "\(slot)"
        environment[WorkerEnvironment.livenessVariable] = "\(WorkerEnvironment.livenessDescriptor)"
        // A process group of its own: Ctrl-C in a terminal signals the supervisor's group, and the supervisor
        // alone decides how its workers stop (a worker signalled too would drain before the supervisor knew, or
        // take the supervisor's SIGTERM as a second signal and exit at once). A worker whose supervisor is gone
        // notices at its next heartbeat (the pipe is closed) and drains (``LivenessBeat``).
        let pid: pid_t
        do {
            pid = try ProcessSpawn.spawn(
                executable, arguments: arguments,
                environment: environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" },
                ownProcessGroup: true, actions: &actions)
        } catch {
            close(writeEnd)
            close(readEnd)
            throw failure("posix_spawn \(executable)", error.number)
        }
        close(writeEnd)
        let process = WorkerProcess(slot: slot, pid: pid)
        process.watch(heartbeats: readEnd, events: events)
        return process
    }

    /// Sends `signal` to the worker.
    func signal(_ signal: Int32) {
        _ = kill(pid, signal)
    }

    /// Kills the worker and everything in its process group: a worker killed while the Swift runtime's crash
    /// handling holds it leaves its backtracer (a child of its own, in its group) otherwise, asleep for ever and
    /// holding its memory (seen: 115 MB each).
    func killGroup() {
        if kill(-pid, SIGKILL) != 0 { _ = kill(pid, SIGKILL) }
    }

    private func watch(heartbeats descriptor: Int32, events: AsyncStream<Event>.Continuation) {
        let (slot, pid) = (self.slot, self.pid)
        startThread(named: "sluice-w\(slot)-beat") {
            var buffer = [UInt8](repeating: 0, count: 64)
            while true {
                let count = read(descriptor, &buffer, buffer.count)
                if count > 0 {
                    events.yield(.beat(slot: slot, pid: pid))
                } else if count < 0, errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            close(descriptor)
        }
        startThread(named: "sluice-w\(slot)-wait") {
            let (description, exit) = Self.describe(ProcessSpawn.waitForEnding(of: pid))
            events.yield(.exited(slot: slot, pid: pid, status: description, exit: exit))
        }
    }

    /// How a process ended as a person reads it (`exit 0`, `signal 4 (SIGILL)`), and as the slot takes it.
    static func describe(_ ending: ProcessSpawn.Ending) -> (String, WorkerSlot.Exit) {
        switch ending {
        case .exit(let code):
            return ("exit \(code)", .code(code))
        case .signal(let signal):
            let names: [Int32: String] = [
                SIGILL: "SIGILL", SIGTRAP: "SIGTRAP", SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE",
                SIGSEGV: "SIGSEGV", SIGKILL: "SIGKILL", SIGTERM: "SIGTERM", SIGINT: "SIGINT",
            ]
            return ("signal \(signal)\(names[signal].map { " (\($0))" } ?? "")", .signal(signal))
        }
    }

    private static func failure(_ call: String, _ code: Int32) -> SluiceError {
        SluiceError(code: .state, message: "cannot start a worker process: \(call): \(String(cString: strerror(code)))")
    }
}
