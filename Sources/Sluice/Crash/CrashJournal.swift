import CSluiceCrash
import Logging
import SluiceKafka
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// What a process that died of a fatal signal was doing, read from its crash journal by a later start
/// (docs/architecture.md §12).
public struct CrashFinding: Sendable, Equatable {
    /// Whose code ran on the faulting thread.
    public enum Fault: String, Sendable, Equatable {
        /// A lane inside its handler call: ``CrashFinding/culprit`` is that call's message.
        case handler
        /// Sluice's own code: no message is blamed.
        case sluice
        /// A thread Sluice cannot tell (a task a handler started, a thread of its own): every message in
        /// a handler call at the time is a suspect.
        case unknown
        /// Unattributed, while exactly one suspect of an earlier unattributed death ran alone: that
        /// suspect's message is the culprit.
        case eliminated
    }

    /// A handler call in progress when the process died.
    public struct Call: Sendable, Equatable, CustomStringConvertible {
        /// The call's partition.
        public var topicPartition: TopicPartition
        /// The call's first offset.
        public var offset: Int64
        /// Messages in the call (1, or a batch).
        public var count: Int
        /// The pipeline the call ran in.
        public var generation: UInt64
        /// Whether it was a suspect's call, run alone to find the culprit of an earlier unattributed death.
        public var careful: Bool = false
        /// The timestamp of the call's first message (ms since the epoch), when it had one: it tells that
        /// message from another at the same offset of a deleted and recreated topic.
        public var timestampMilliseconds: Int64? = nil

        public var description: String {
            count == 1 ? "\(topicPartition)@\(offset)" : "\(topicPartition)@\(offset)+\(count)"
        }
    }

    /// The fatal signal (SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGFPE or SIGABRT).
    public var signal: Int32
    /// Whose code ran on the faulting thread.
    public var fault: Fault
    /// The call the signal is attributed to (``Fault/handler``).
    public var culprit: Call?
    /// Every handler call in progress at the death.
    public var inFlight: [Call]
    /// The process that died, and when (ms since the epoch).
    public var pid: Int64
    /// When it died (ms since the epoch).
    public var diedAtMilliseconds: Int64
    /// When that process opened the journal (ms since the epoch): a crash report older than this is another
    /// process's, even with the same PID (every container's first process is PID 1).
    public var startedAtMilliseconds: Int64 = 0
    /// The journal file it was read from.
    public var journal: String

    /// The signal's name, `SIGILL` and so on.
    public var signalName: String {
        switch signal {
        case SIGILL: "SIGILL"
        case SIGTRAP: "SIGTRAP"
        case SIGSEGV: "SIGSEGV"
        case SIGBUS: "SIGBUS"
        case SIGFPE: "SIGFPE"
        case SIGABRT: "SIGABRT"
        default: "signal \(signal)"
        }
    }
}

/// One lane's slot in the crash journal: the lane writes the message it hands to its handler, a few stores
/// into shared memory and no system call.
struct JournalSlot: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<sluice_journal_slot>

    @inline(__always) func begin(_ offset: Int64, count: Int, careful: Bool = false, timestamp: Int64? = nil) {
        sluice_journal_begin(
            pointer, offset, Int32(truncatingIfNeeded: count), careful ? 1 : 0, timestamp == nil ? 0 : 1, timestamp ?? 0
        )
    }
    @inline(__always) func end() { sluice_journal_end(pointer) }

    /// Records that the lane completed `offset` (not handed over to the watermark yet): a successor of a process
    /// that dies now does not handle it again. False when it is outside the slot's window: hand over first.
    @inline(__always) func completed(_ offset: Int64) -> Bool { sluice_journal_completed(pointer, offset) == 0 }

    /// The lane handed its completions over.
    @inline(__always) func clearCompleted() { sluice_journal_clear_completed(pointer) }

    /// Binds the slot to the task that calls this: a fault while that task runs a handler call is blamed on
    /// its message. Call from the lane's own task.
    func bindToCurrentTask() {
        pointer.pointee.task = CrashJournal.currentTaskIdentity()
    }
}

/// The crash journal (docs/architecture.md §12): a memory-mapped file in the host's state directory with a slot per
/// processing lane naming the message in its handler. A fatal signal handler marks which lane ran on the
/// faulting thread; a later start reads what the dead process left.
///
/// Several processes may share a state directory: each holds its own file (`crash-journal-N.bin`) under an
/// advisory lock, and a start reads every file no live process holds.
final class CrashJournal: @unchecked Sendable {
    /// Lane slots in a journal: lanes beyond it are not journaled (a warning says so).
    static let defaultCapacity = 16_384
    /// The most slots a journal read from a file may have (a file from outside the process).
    static let maximumCapacity = 1 << 20
    static let slotSize = MemoryLayout<sluice_journal_slot>.stride

    let path: String
    let capacity: Int
    /// How far this process got with each partition it owns, read by its successor if it dies.
    let progress: ProgressJournal
    /// How far each process that ended without a clean stop (a fatal signal, killed, out of memory) got with its
    /// partitions, read at open from their progress files and their lanes' slots, by the cluster and group it
    /// was of: per partition the position to start at and commit metadata naming what is done above it, the
    /// furthest of each partition.
    let predecessorsProgress: [StateOwner: [TopicPartitionOffset]]
    private let descriptor: Int32
    private let base: UnsafeMutableRawPointer
    private let freeSlots: Mutex<[Int32]>
    private let logger: Logger
    private let warnedFull = Atomic<Bool>(false)

    private var header: UnsafeMutablePointer<sluice_journal_header> {
        base.assumingMemoryBound(to: sluice_journal_header.self)
    }

    /// Opens a journal in `directory` (created when missing): the first file no live process holds, or a new
    /// one, with its progress file. Returns it with what dead processes died of in every file it could read
    /// (how far they got is the journal's ``predecessorsProgress``).
    static func open(
        directory: String, capacity: Int = defaultCapacity, progressCapacity: Int = ProgressJournal.defaultCapacity,
        logger: Logger
    ) throws(SluiceError) -> (CrashJournal, [CrashFinding]) {
        try makeDirectory(directory)
        var findings: [CrashFinding] = []
        var progress: [StateOwner: [TopicPartition: TopicPartitionOffset]] = [:]
        var mine: (descriptor: Int32, path: String, index: Int)?
        var index = 0
        while true {
            let path = "\(directory)/crash-journal-\(index).bin"
            index += 1
            var status = stat()
            let exists = lstat(path, &status) == 0
            if !exists, mine != nil { break }
            // Only a regular file of this user's is a journal: a symbolic link (which would make the host write
            // wherever it points), a directory or another user's file is left alone, and the next name is tried.
            if exists, (status.st_mode & S_IFMT) != S_IFREG || status.st_uid != geteuid() {
                logger.error(
                    "crash journal file skipped: not a regular file of this user",
                    metadata: ["sluice.journal": "\(path)"])
                if index > 1_000 { throw failure("finding a journal file in \(directory)") }
                continue
            }
            let descriptor = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard descriptor >= 0 else { throw failure("opening \(path)") }
            guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
                // A live process holds it.
                Glibc.close(descriptor)
                continue
            }
            if exists, status.st_size > 0, !isJournal(descriptor) {
                logger.error(
                    "crash journal file skipped: it is not a Sluice journal, and is left as it is",
                    metadata: ["sluice.journal": "\(path)"])
                flock(descriptor, LOCK_UN)
                Glibc.close(descriptor)
                continue
            }
            if exists, let left = read(descriptor, path: path, logger: logger) {
                if let finding = left.finding { findings.append(finding) }
                // Read before this process empties it, when the file is its own.
                let (owner, entries) = ProgressJournal.read(path: progressPath(directory, index - 1), logger: logger)
                if let owner {
                    for entry in ProgressJournal.merge(entries, completed: left.completed)
                    where entry.offset > progress[owner]?[entry.topicPartition]?.offset ?? -1 {
                        progress[owner, default: [:]][entry.topicPartition] = entry
                    }
                }
            }
            if mine == nil {
                mine = (descriptor, path, index - 1)
            } else {
                flock(descriptor, LOCK_UN)
                Glibc.close(descriptor)
            }
            if !exists { break }
        }
        let progressFile = try ProgressJournal(
            path: progressPath(directory, mine!.index), capacity: progressCapacity, logger: logger)
        let journal = try CrashJournal(
            descriptor: mine!.descriptor, path: mine!.path, capacity: capacity, progress: progressFile,
            predecessorsProgress: progress.mapValues { $0.values.sorted { $0.topicPartition < $1.topicPartition } },
            logger: logger)
        return (journal, findings)
    }

    /// The progress file beside journal file `index`.
    static func progressPath(_ directory: String, _ index: Int) -> String { "\(directory)/progress-\(index).bin" }

    private init(
        descriptor: Int32, path: String, capacity: Int, progress: ProgressJournal,
        predecessorsProgress: [StateOwner: [TopicPartitionOffset]], logger: Logger
    ) throws(SluiceError) {
        self.descriptor = descriptor
        self.path = path
        self.progress = progress
        self.predecessorsProgress = predecessorsProgress
        self.capacity = capacity
        self.logger = logger
        // Emptied first, so every slot is free.
        let size = Int(SLUICE_JOURNAL_HEADER_SIZE) + capacity * Self.slotSize
        let mapped = try MappedFile.mapEmpty(descriptor, size: size, path: path, failure: Self.failure)
        base = mapped
        freeSlots = Mutex((0..<Int32(capacity)).reversed())
        let header = base.assumingMemoryBound(to: sluice_journal_header.self)
        header.pointee.version = UInt32(SLUICE_JOURNAL_VERSION)
        header.pointee.capacity = UInt32(capacity)
        header.pointee.pid = Int64(getpid())
        header.pointee.started_ms = Self.nowMilliseconds()
        header.pointee.attributed_slot = -1
        header.pointee.state = SLUICE_JOURNAL_RUNNING
        header.pointee.magic = SLUICE_JOURNAL_MAGIC
    }

    /// Registers this journal with the process's fatal-signal handlers (installed with the first journal
    /// registered): a trap from now on is recorded here. Each host registers its own journal; a process with
    /// several hosts records a trap in each (a handler call of one host's blames nothing in the others').
    func installSignalHandlers() throws(SluiceError) {
        let error = sluice_crash_register(base)
        guard error == 0 else {
            throw SluiceError(
                code: .state,
                message: error == ENOSPC
                    ? "installing the fatal-signal handlers failed: \(SLUICE_CRASH_MAX_JOURNALS) hosts of this process already have a crash journal (host.crashJournal: off for more)"
                    : "installing the fatal-signal handlers failed: \(String(cString: strerror(error)))")
        }
    }

    /// A free slot for a lane of `topicPartition`, or nil when every slot is taken.
    @discardableResult
    func acquire(_ topicPartition: TopicPartition, generation: UInt64) -> JournalSlot? {
        guard let index = freeSlots.withLock({ $0.popLast() }) else {
            if !warnedFull.exchange(true, ordering: .relaxed) {
                logger.warning(
                    "crash journal full: lanes beyond its capacity are not journaled, and a trap in their handlers is not attributed",
                    metadata: ["sluice.journal": "\(path)", "sluice.capacity": "\(capacity)"])
            }
            return nil
        }
        let pointer =
            (base + Int(SLUICE_JOURNAL_HEADER_SIZE)).assumingMemoryBound(to: sluice_journal_slot.self) + Int(index)
        pointer.pointee.in_handler = 0
        sluice_journal_clear_completed(pointer)
        pointer.pointee.partition = topicPartition.partition
        pointer.pointee.generation = generation
        let topic = Array(topicPartition.topic.utf8.prefix(Int(SLUICE_JOURNAL_TOPIC_CAPACITY)))
        withUnsafeMutableBytes(of: &pointer.pointee.topic) { bytes in
            bytes.copyBytes(from: topic)
        }
        pointer.pointee.topic_length = Int32(topic.count)
        pointer.pointee.task = 0
        return JournalSlot(pointer: pointer)
    }

    /// Frees a lane's slot (its lane ended).
    func release(_ slot: JournalSlot) {
        slot.pointer.pointee.in_handler = 0
        slot.clearCompleted()
        slot.pointer.pointee.task = 0
        let index =
            slot.pointer - (base + Int(SLUICE_JOURNAL_HEADER_SIZE)).assumingMemoryBound(to: sluice_journal_slot.self)
        freeSlots.withLock { $0.append(Int32(index)) }
    }

    /// Marks a clean stop: the next start finds nothing to blame. The mapping stays (lanes abandoned in a
    /// handler call may still write their slots) and so does the lock until the process exits.
    func close() {
        sluice_crash_unregister(base)
        header.pointee.state = SLUICE_JOURNAL_CLOSED
    }

    /// Lets go of the file as a process that died would (lock and descriptor; nothing marked): for tests
    /// that read a journal left behind without killing the test process.
    func relinquish() {
        sluice_crash_unregister(base)
        flock(descriptor, LOCK_UN)
        Glibc.close(descriptor)
    }

    /// Runs `body` with the mapping's base address (tests ask the attribution the signal handler would make).
    func withBase<R>(_ body: (UnsafeMutableRawPointer) -> R) -> R { body(base) }

    /// Records a fatal signal as the signal handler does, without raising it (tests).
    func recordFatalSignalForTesting(_ signal: Int32) {
        sluice_crash_record(base, signal)
    }

    /// The identity the executor reports for the running job, for the current task.
    static func currentTaskIdentity() -> UInt64 {
        withUnsafeCurrentTask { task in
            guard let task else { return 0 }
            return UInt64(UInt(bitPattern: unsafeBitCast(task, to: UnsafeRawPointer.self)))
        }
    }

    // MARK: Reading a dead process's journal

    /// Whether the file starts with a journal's header (its magic number).
    private static func isJournal(_ descriptor: Int32) -> Bool {
        var header = sluice_journal_header()
        return pread(descriptor, &header, MemoryLayout<sluice_journal_header>.size, 0)
            == MemoryLayout<sluice_journal_header>.size
            && header.magic == SLUICE_JOURNAL_MAGIC
    }

    /// What a journal left by a process that ended without a clean stop says.
    private struct Left {
        /// What it died of, when a fatal signal was caught.
        var finding: CrashFinding?
        /// Offsets its lanes completed and had not handed over to their pipelines' watermarks, per partition.
        var completed: [TopicPartition: Set<Int64>] = [:]
    }

    /// What the process that wrote the journal left, nil when it stopped cleanly (or the file is not a journal
    /// this host reads).
    private static func read(_ descriptor: Int32, path: String, logger: Logger) -> Left? {
        var header = sluice_journal_header()
        guard
            pread(descriptor, &header, MemoryLayout<sluice_journal_header>.size, 0)
                == MemoryLayout<sluice_journal_header>.size
        else {
            return nil
        }
        guard header.magic == SLUICE_JOURNAL_MAGIC else {
            if header.magic != 0 {
                logger.error("crash journal ignored: not a Sluice journal", metadata: ["sluice.journal": "\(path)"])
            }
            return nil
        }
        // Version 1's slots are a prefix of version 2's, without the lanes' completions.
        let stride: Int
        switch header.version {
        case UInt32(SLUICE_JOURNAL_VERSION): stride = slotSize
        case 1: stride = Int(SLUICE_JOURNAL_VERSION_1_SLOT_SIZE)
        default:
            logger.error(
                "crash journal ignored: layout version \(header.version) is not understood (this host reads 1 and \(SLUICE_JOURNAL_VERSION))",
                metadata: ["sluice.journal": "\(path)"])
            return nil
        }
        guard header.state == SLUICE_JOURNAL_RUNNING else { return nil }
        // Read once: mark it before acting on it.
        var read = SLUICE_JOURNAL_READ
        _ = pwrite(
            descriptor, &read, MemoryLayout<Int32>.size, MemoryLayout<sluice_journal_header>.offset(of: \.state)!)
        var left = Left()
        var calls: [CrashFinding.Call] = []
        var culprit: CrashFinding.Call?
        // The slot count comes from the file: bounded by what the file holds and by the largest journal a host makes.
        var status = stat()
        let held =
            fstat(descriptor, &status) == 0
            ? max(0, (Int(status.st_size) - Int(SLUICE_JOURNAL_HEADER_SIZE)) / stride) : 0
        for index in 0..<min(Int(header.capacity), held, maximumCapacity) {
            var slot = sluice_journal_slot()
            slot.completed_base = -1
            let offset = off_t(Int(SLUICE_JOURNAL_HEADER_SIZE) + index * stride)
            guard pread(descriptor, &slot, stride, offset) == stride else { break }
            let inCall = slot.in_handler != 0
            let completed = slot.completed_base >= 0
            guard inCall || completed else { continue }
            let length = Int(max(0, min(slot.topic_length, SLUICE_JOURNAL_TOPIC_CAPACITY)))
            let topic = withUnsafeBytes(of: slot.topic) { String(decoding: $0.prefix(length), as: UTF8.self) }
            let topicPartition = TopicPartition(topic, slot.partition)
            if completed, TopicName.problem(topic) == nil, slot.partition >= 0,
                InputLimits.offsets.contains(slot.completed_base)
            {
                withUnsafeBytes(of: slot.completed) { words in
                    for distance in 0..<Int(SLUICE_JOURNAL_COMPLETED_WINDOW)
                    where words[distance >> 3] & (1 << (distance & 7)) != 0 {
                        left.completed[topicPartition, default: []].insert(slot.completed_base + Int64(distance))
                    }
                }
            }
            guard inCall else { continue }
            let call = CrashFinding.Call(
                topicPartition: topicPartition, offset: slot.offset,
                count: Int(max(1, slot.count)),
                generation: slot.generation, careful: slot.careful != 0,
                timestampMilliseconds: slot.has_timestamp == 1
                    && InputLimits.epochMilliseconds.contains(slot.timestamp_ms) ? slot.timestamp_ms : nil)
            calls.append(call)
            if header.fault == SLUICE_FAULT_HANDLER, Int(header.attributed_slot) == index { culprit = call }
        }
        guard header.signal != 0 else {
            logger.info(
                "the last process on this crash journal ended without a clean stop and without a fatal signal (killed, or out of memory): no message is blamed",
                metadata: ["sluice.journal": "\(path)", "sluice.pid": "\(header.pid)"])
            return left
        }
        var fault: CrashFinding.Fault =
            switch header.fault {
            case SLUICE_FAULT_HANDLER where culprit != nil: .handler
            case SLUICE_FAULT_SLUICE: .sluice
            default: .unknown
            }
        // Unattributed, but a suspect of an earlier unattributed death was running alone: it is the culprit.
        let careful = calls.filter(\.careful)
        if fault == .unknown, careful.count == 1 {
            culprit = careful[0]
            fault = .eliminated
        }
        left.finding = CrashFinding(
            signal: header.signal, fault: fault, culprit: culprit, inFlight: calls, pid: header.pid,
            diedAtMilliseconds: header.died_ms, startedAtMilliseconds: header.started_ms, journal: path)
        return left
    }

    // MARK: Helpers

    private static func makeDirectory(_ directory: String) throws(SluiceError) {
        var path = ""
        for component in directory.split(separator: "/", omittingEmptySubsequences: false) {
            path +=
                path.isEmpty && directory.hasPrefix("/")
                ? "/\(component)" : (path.isEmpty ? "\(component)" : "/\(component)")
            if component.isEmpty { continue }
            // The state directory itself is this user's alone (0700): what is in it decides what a host skips.
            let mode: mode_t = path == directory || path == "/" + directory ? 0o700 : 0o755
            if mkdir(path, mode) != 0, errno != EEXIST { throw failure("creating the state directory \(directory)") }
        }
    }

    private static func failure(_ what: String) -> SluiceError {
        SluiceError(
            code: .state,
            message:
                "crash journal: \(what) failed: \(String(cString: strerror(errno))); set host.stateDirectory to a writable directory that survives restarts, or host.crashJournal: off"
        )
    }

    static func nowMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}
