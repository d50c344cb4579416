import CSluiceCrash
import Logging
import SluiceKafka
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// How far a process got with each partition it owned, kept in a memory-mapped file beside its crash journal
/// (`progress-N.bin` beside `crash-journal-N.bin`, held under the journal's lock): the watermark its pipelines
/// reached and which offsets above it are done, written as each lane hands its completions over (at most 64
/// messages apart). Stored offsets are committed only every commit interval; when the process dies in between,
/// its successor reads this file and starts each partition where the dead process got to, skipping what it
/// finished above that, so a death redoes only the messages in handler calls and those a lane had finished but
/// not handed over (docs/architecture.md §12).
///
/// Writing is a few stores into shared memory under a lock, once per lane flush.
final class ProgressJournal: @unchecked Sendable {
    /// Partitions a file keeps: more are not kept (a warning says so) and resume from the group's commit.
    static let defaultCapacity = 4_096
    /// The most entries a file read from disk may have (a file from outside the process).
    static let maximumCapacity = 1 << 20
    static let entrySize = MemoryLayout<sluice_progress_entry>.stride

    let path: String
    let capacity: Int
    private let descriptor: Int32
    private let base: UnsafeMutableRawPointer
    private let logger: Logger
    private let warnedFull = Atomic<Bool>(false)
    /// Which entry each partition has, and the free ones.
    private let entries: Mutex<(byPartition: [TopicPartition: Int], free: [Int])>

    /// Creates (or empties) the file at `path` for this process. The caller holds the lock of the journal beside it.
    init(path: String, capacity: Int = defaultCapacity, logger: Logger) throws(SluiceError) {
        self.path = path
        self.capacity = capacity
        self.logger = logger
        let descriptor = Self.openRegularFile(path, flags: O_RDWR | O_CREAT, logger: logger)
        guard descriptor >= 0 else { throw Self.failure("opening \(path)") }
        self.descriptor = descriptor
        let size = Int(SLUICE_PROGRESS_HEADER_SIZE) + capacity * Self.entrySize
        let mapped: UnsafeMutableRawPointer
        do {
            // Emptied first, so every entry is free.
            mapped = try MappedFile.mapEmpty(descriptor, size: size, path: path, failure: Self.failure)
        } catch {
            Glibc.close(descriptor)
            throw error
        }
        base = mapped
        entries = Mutex(([:], Array((0..<capacity).reversed())))
        let header = base.assumingMemoryBound(to: sluice_progress_header.self)
        header.pointee.version = UInt32(SLUICE_PROGRESS_VERSION)
        header.pointee.capacity = UInt32(capacity)
        header.pointee.pid = Int64(getpid())
        header.pointee.magic = SLUICE_PROGRESS_MAGIC
    }

    /// Whether the file names the cluster and group its progress is of (``own(by:)``).
    var hasOwner: Bool {
        base.assumingMemoryBound(to: sluice_progress_header.self).pointee.group_length != 0
    }

    /// Names the cluster and group the progress is of: a successor uses it only in the same group on the same
    /// cluster (a state directory reused elsewhere must not skip anything there). Until then the file is not used;
    /// once named, it stays.
    func own(by owner: StateOwner) {
        let cluster = Array(owner.cluster.utf8)
        let group = Array(owner.group.utf8)
        guard cluster.count <= Int(SLUICE_PROGRESS_OWNER_CAPACITY), group.count <= Int(SLUICE_PROGRESS_OWNER_CAPACITY),
            !cluster.isEmpty, !group.isEmpty
        else { return }
        entries.withLock { _ in
            let header = base.assumingMemoryBound(to: sluice_progress_header.self)
            guard header.pointee.group_length == 0 else { return }
            withUnsafeMutableBytes(of: &header.pointee.cluster) { $0.copyBytes(from: cluster) }
            withUnsafeMutableBytes(of: &header.pointee.group) { $0.copyBytes(from: group) }
            header.pointee.cluster_length = UInt16(cluster.count)
            header.pointee.group_length = UInt16(group.count)
        }
    }

    deinit {
        munmap(base, Int(SLUICE_PROGRESS_HEADER_SIZE) + capacity * Self.entrySize)
        Glibc.close(descriptor)
    }

    private func entry(_ index: Int) -> UnsafeMutablePointer<sluice_progress_entry> {
        (base + Int(SLUICE_PROGRESS_HEADER_SIZE)).assumingMemoryBound(to: sluice_progress_entry.self) + index
    }

    /// Records that every offset of `topicPartition` below `watermark` is done, and so are `done` (those in the
    /// window above the watermark are kept; others are handled again after a death).
    func advance(_ topicPartition: TopicPartition, to watermark: Int64, done: [Int64]) {
        entries.withLock { entries in
            let index: Int
            if let existing = entries.byPartition[topicPartition] {
                index = existing
            } else {
                let topic = Array(topicPartition.topic.utf8)
                guard topic.count <= Int(SLUICE_PROGRESS_TOPIC_CAPACITY), let free = entries.free.popLast() else {
                    if !warnedFull.exchange(true, ordering: .relaxed) {
                        logger.warning(
                            "progress file full: partitions beyond its capacity resume from the group's commit after a death",
                            metadata: ["sluice.progressFile": "\(path)", "sluice.capacity": "\(capacity)"])
                    }
                    return
                }
                index = free
                entries.byPartition[topicPartition] = free
                topic.withUnsafeBytes { bytes in
                    sluice_progress_claim(
                        entry(index), 1, topicPartition.partition, watermark, bytes.baseAddress, UInt16(bytes.count))
                }
            }
            done.withUnsafeBufferPointer { done in
                sluice_progress_advance(entry(index), watermark, done.baseAddress, Int32(clamping: done.count))
            }
        }
    }

    /// Forgets a partition (released or lost: what it knew is the group's commit or another member's now).
    func forget(_ topicPartition: TopicPartition) {
        entries.withLock { entries in
            guard let index = entries.byPartition.removeValue(forKey: topicPartition) else { return }
            sluice_progress_claim(entry(index), 0, 0, 0, nil, 0)
            entries.free.append(index)
        }
    }

    // MARK: Reading a dead process's file

    /// The progress a dead process left at `path`, and the cluster and group it is of (none: the file is not used):
    /// per partition, the watermark and commit metadata naming what is done above it. Every
    /// entry is input from a file: one that is torn (the process died writing it), out of range or not a
    /// partition's is refused with a log line naming the file and the entry, and the rest is read.
    static func read(path: String, logger: Logger) -> (owner: StateOwner?, entries: [TopicPartitionOffset]) {
        let descriptor = openRegularFile(path, flags: O_RDONLY, logger: logger)
        guard descriptor >= 0 else { return (nil, []) }
        defer { Glibc.close(descriptor) }
        var header = sluice_progress_header()
        guard
            pread(descriptor, &header, MemoryLayout<sluice_progress_header>.size, 0)
                == MemoryLayout<sluice_progress_header>.size, header.magic == SLUICE_PROGRESS_MAGIC
        else {
            logger.error(
                "progress file ignored: not a Sluice progress file", metadata: ["sluice.progressFile": "\(path)"])
            return (nil, [])
        }
        guard header.version == UInt32(SLUICE_PROGRESS_VERSION) else {
            logger.error(
                "progress file ignored: layout version \(header.version) is not understood (this host reads \(SLUICE_PROGRESS_VERSION))",
                metadata: ["sluice.progressFile": "\(path)"])
            return (nil, [])
        }
        let clusterLength = Int(header.cluster_length)
        let groupLength = Int(header.group_length)
        guard (1...Int(SLUICE_PROGRESS_OWNER_CAPACITY)).contains(clusterLength),
            (1...Int(SLUICE_PROGRESS_OWNER_CAPACITY)).contains(groupLength)
        else {
            logger.info(
                "progress file not used: it does not say which cluster and group it is of (the process died before its first assignment)",
                metadata: ["sluice.progressFile": "\(path)"])
            return (nil, [])
        }
        let owner = StateOwner(
            cluster: withUnsafeBytes(of: header.cluster) { String(decoding: $0.prefix(clusterLength), as: UTF8.self) },
            group: withUnsafeBytes(of: header.group) { String(decoding: $0.prefix(groupLength), as: UTF8.self) })
        var status = stat()
        let held =
            fstat(descriptor, &status) == 0
            ? max(0, (Int(status.st_size) - Int(SLUICE_PROGRESS_HEADER_SIZE)) / entrySize) : 0
        var result: [TopicPartition: TopicPartitionOffset] = [:]
        var entry = sluice_progress_entry()
        for index in 0..<min(Int(header.capacity), held, maximumCapacity) {
            let at = off_t(Int(SLUICE_PROGRESS_HEADER_SIZE) + index * entrySize)
            guard pread(descriptor, &entry, entrySize, at) == entrySize else { break }
            guard entry.used != 0 else { continue }
            func refuse(_ why: String) {
                logger.error(
                    "progress entry refused: \(why); its partition resumes from the group's commit",
                    metadata: ["sluice.progressFile": "\(path)", "sluice.entry": "\(index)"])
            }
            guard entry.sequence & 1 == 0 else {
                refuse("the process died while writing it")
                continue
            }
            let topicLength = Int(entry.topic_length)
            guard topicLength <= Int(SLUICE_PROGRESS_TOPIC_CAPACITY) else {
                refuse("topic length \(topicLength) exceeds the entry's \(SLUICE_PROGRESS_TOPIC_CAPACITY) bytes")
                continue
            }
            let topic = withUnsafeBytes(of: entry.topic) { String(decoding: $0.prefix(topicLength), as: UTF8.self) }
            if let problem = TopicName.problem(topic) {
                refuse("topic \(TopicName.quoted(topic)): \(problem)")
                continue
            }
            guard entry.partition >= 0 else {
                refuse("partition \(entry.partition) is negative")
                continue
            }
            let watermark = entry.watermark
            // Room for the window above it: offsets computed from it stay in range.
            guard InputLimits.offsets.contains(watermark) else {
                refuse("watermark \(watermark) is out of range")
                continue
            }
            var done = Set<Int64>()
            withUnsafeBytes(of: entry.done) { bits in
                for offset in watermark..<(watermark + Int64(SLUICE_PROGRESS_WINDOW)) {
                    let bit = Int(offset % Int64(SLUICE_PROGRESS_WINDOW))
                    if bits[bit >> 3] & (1 << (bit & 7)) != 0 { done.insert(offset) }
                }
            }
            let topicPartition = TopicPartition(topic, entry.partition)
            // One entry per partition is written; a second is not this process's, and the lower one is dropped.
            if let other = result[topicPartition], other.offset >= watermark { continue }
            result[topicPartition] = TopicPartitionOffset(
                topicPartition, offset: watermark, metadata: CommitMetadata.encode(done: done, above: watermark))
        }
        return (owner, result.values.sorted { $0.topicPartition < $1.topicPartition })
    }

    /// The progress of `entries` with the offsets lanes had completed and not handed over (`completed`, from the
    /// crash journal's slots) added: those right at the watermark move it on, the others are named above it.
    /// Completions of a partition with no entry are left out (its watermark is not known).
    static func merge(_ entries: [TopicPartitionOffset], completed: [TopicPartition: Set<Int64>])
        -> [TopicPartitionOffset]
    {
        guard !completed.isEmpty else { return entries }
        return entries.map { entry in
            guard let lanes = completed[entry.topicPartition] else { return entry }
            var done = lanes
            if let metadata = entry.metadata,
                let decoded = try? CommitMetadata.decode(metadata, committed: entry.offset)
            {
                done.formUnion(decoded.done)
            }
            var position = entry.offset
            while done.contains(position) { position += 1 }
            return TopicPartitionOffset(
                entry.topicPartition, offset: position, metadata: CommitMetadata.encode(done: done, above: position))
        }
    }

    // MARK: Helpers

    /// Opens `path` if it is a regular file of this user's (or, with O_CREAT, a new one), never through a link.
    private static func openRegularFile(_ path: String, flags: Int32, logger: Logger) -> Int32 {
        var status = stat()
        if lstat(path, &status) == 0, (status.st_mode & S_IFMT) != S_IFREG || status.st_uid != geteuid() {
            logger.error(
                "progress file skipped: not a regular file of this user", metadata: ["sluice.progressFile": "\(path)"])
            errno = EPERM
            return -1
        }
        return Glibc.open(path, flags | O_CLOEXEC | O_NOFOLLOW, 0o600)
    }

    private static func failure(_ what: String) -> SluiceError {
        SluiceError(
            code: .state,
            message:
                "progress file: \(what) failed: \(String(cString: strerror(errno))); set host.stateDirectory to a writable directory that survives restarts, or host.crashJournal: off"
        )
    }
}
