import CSluiceCrash
import Foundation
import Logging
import SluiceKafka
import Testing

@testable import Sluice

@Suite("Progress file: how far a process that died got with each partition", .timeLimit(.minutes(1)))
struct ProgressJournalTests {
    let logger: Logger = {
        var logger = Logger(label: "sluice.progress-test")
        logger.logLevel = .critical
        return logger
    }()

    let owner = StateOwner(cluster: "cluster-1", group: "orders-service")

    /// A journal of this test's cluster and group, as a host has once assigned.
    func open(_ directory: String, progressCapacity: Int = ProgressJournal.defaultCapacity) throws -> CrashJournal {
        let (journal, _) = try CrashJournal.open(
            directory: directory, progressCapacity: progressCapacity, logger: logger)
        journal.progress.own(by: owner)
        return journal
    }

    func progress(_ journal: CrashJournal) -> [TopicPartitionOffset] { journal.predecessorsProgress[owner] ?? [] }

    func directory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("sluice-progress-\(UUID().uuidString)").path
    }

    @Test(
        "a process that ends without a clean stop leaves each partition's watermark and what is done above it; a clean stop leaves none"
    )
    func deadProcessProgress() throws {
        let directory = directory()
        let first = try open(directory)
        #expect(progress(first).isEmpty)
        first.progress.advance(TopicPartition("orders", 0), to: 100, done: [96, 97, 98, 99, 102])
        first.progress.advance(TopicPartition("orders", 0), to: 120, done: [119, 122, 125, 126, 127])
        first.progress.advance(TopicPartition("orders", 0), to: 110, done: [130])  // an older pipeline's: behind
        first.progress.advance(TopicPartition("orders", 1), to: 40, done: [])
        first.progress.advance(TopicPartition("payments", 0), to: 9, done: [8])
        first.progress.forget(TopicPartition("orders", 1))
        first.relinquish()  // as a process that died

        let second = try open(directory)
        #expect(
            progress(second) == [
                TopicPartitionOffset(TopicPartition("orders", 0), offset: 120, metadata: "sluice/1 2,5-7,10"),
                TopicPartitionOffset(TopicPartition("payments", 0), offset: 9),
            ],
            "the furthest watermark of each partition it still had, with the offsets done above; a released one is forgotten"
        )
        #expect(second.path == first.path, "the successor takes the dead process's file")
        second.progress.advance(TopicPartition("orders", 3), to: 7, done: [])
        second.close()
        second.relinquish()

        let third = try open(directory)
        #expect(progress(third).isEmpty, "a clean stop committed its progress: nothing to resume")
        third.relinquish()
    }

    @Test(
        "the window of done offsets moves with the watermark: a bit freed by the watermark stands for an offset a window further"
    )
    func window() throws {
        let directory = directory()
        let dead = try open(directory)
        let window = Int64(SLUICE_PROGRESS_WINDOW)
        let partition = TopicPartition("orders", 0)
        dead.progress.advance(partition, to: 0, done: [5, window + 1])  // the second is beyond the window: not kept
        dead.progress.advance(partition, to: 10, done: [window + 5, window + 20])
        dead.relinquish()
        let next = try open(directory)
        #expect(
            progress(next) == [
                TopicPartitionOffset(
                    partition, offset: 10, metadata: CommitMetadata.encode(done: [window + 5], above: 10))
            ], "offset 5's bit was cleared when the watermark passed it; window + 20 is beyond the window from 10")
        next.relinquish()
    }

    @Test(
        "progress is read once: the successor's own file starts empty, so a later death does not resume from an old one"
    )
    func readOnce() throws {
        let directory = directory()
        let first = try open(directory)
        first.progress.advance(TopicPartition("orders", 0), to: 50, done: [])
        first.relinquish()
        let second = try open(directory)
        #expect(progress(second).map(\.offset) == [50])
        second.relinquish()  // died before it finished anything
        let third = try open(directory)
        #expect(progress(third).isEmpty)
        third.relinquish()
    }

    @Test("two dead processes' files naming one partition: the one that got further counts")
    func highestWins() throws {
        let directory = directory()
        let one = try open(directory)
        let two = try open(directory)
        one.progress.advance(TopicPartition("orders", 0), to: 80, done: [])
        two.progress.advance(TopicPartition("orders", 0), to: 95, done: [98])
        two.progress.advance(TopicPartition("orders", 1), to: 4, done: [])
        one.relinquish()
        two.relinquish()
        let next = try open(directory)
        #expect(
            progress(next) == [
                TopicPartitionOffset(TopicPartition("orders", 0), offset: 95, metadata: "sluice/1 3"),
                TopicPartitionOffset(TopicPartition("orders", 1), offset: 4),
            ])
        next.relinquish()
    }

    @Test(
        "an entry torn by a death, with a watermark out of range, a bad topic or a topic length past the entry is refused; the rest is read"
    )
    func untrustedEntries() throws {
        let directory = directory()
        let dead = try open(directory)
        for partition in 0..<6 {
            dead.progress.advance(TopicPartition("orders", Int32(partition)), to: 10, done: [])
        }
        let path = CrashJournal.progressPath(directory, 0)
        dead.relinquish()

        let file = try #require(FileHandle(forUpdatingAtPath: path))
        func entry(_ index: Int) -> UInt64 {
            UInt64(Int(SLUICE_PROGRESS_HEADER_SIZE) + index * MemoryLayout<sluice_progress_entry>.stride)
        }
        func write<T>(_ value: T, at position: UInt64) throws {
            try file.seek(toOffset: position)
            try file.write(contentsOf: withUnsafeBytes(of: value) { Data($0) })
        }
        let layout = MemoryLayout<sluice_progress_entry>.self
        try write(UInt64(7), at: entry(0) + UInt64(layout.offset(of: \.sequence)!))  // died while writing it
        try write(Int64(-5), at: entry(1) + UInt64(layout.offset(of: \.watermark)!))
        try write(Int64.max, at: entry(2) + UInt64(layout.offset(of: \.watermark)!))
        try file.seek(toOffset: entry(3) + UInt64(layout.offset(of: \.topic)!))
        try file.write(contentsOf: Data("or/ers".utf8))
        try write(UInt16(60_000), at: entry(4) + UInt64(layout.offset(of: \.topic_length)!))
        try write(Int32(-1), at: entry(5) + UInt64(layout.offset(of: \.partition)!))
        try file.close()

        let next = try open(directory)
        #expect(progress(next).isEmpty, "\(progress(next))")
        next.relinquish()
    }

    @Test(
        "partitions beyond the file's capacity are not kept (they resume from the group's commit); a freed entry is reused"
    )
    func capacity() throws {
        let directory = directory()
        let dead = try open(directory, progressCapacity: 2)
        for partition in 0..<3 { dead.progress.advance(TopicPartition("orders", Int32(partition)), to: 5, done: []) }
        dead.progress.forget(TopicPartition("orders", 0))
        dead.progress.advance(TopicPartition("orders", 2), to: 6, done: [])
        dead.relinquish()
        let next = try open(directory)
        #expect(progress(next).map(\.description) == ["orders/1@5", "orders/2@6"])
        next.relinquish()
    }

    @Test(
        "what lanes completed and had not handed over is in their journal slots: the successor's position moves past it, a handed-over lane leaves nothing"
    )
    func laneCompletions() throws {
        let directory = directory()
        let dead = try open(directory)
        let orders0 = TopicPartition("orders", 0)
        dead.progress.advance(orders0, to: 100, done: [103])
        let one = try #require(dead.acquire(orders0, generation: 1))
        #expect(one.completed(100) && one.completed(101) && one.completed(105))
        let two = try #require(dead.acquire(orders0, generation: 1))
        #expect(two.completed(102))
        let handedOver = try #require(dead.acquire(orders0, generation: 1))
        #expect(handedOver.completed(110))
        handedOver.clearCompleted()
        let noEntry = try #require(dead.acquire(TopicPartition("orders", 1), generation: 1))
        #expect(noEntry.completed(7))
        #expect(!two.completed(102 + Int64(SLUICE_JOURNAL_COMPLETED_WINDOW)), "outside the window: hand over first")
        dead.relinquish()

        let next = try open(directory)
        #expect(
            progress(next) == [TopicPartitionOffset(orders0, offset: 104, metadata: "sluice/1 1")],
            "100-103 done, so the position is 104, and 105 is named above it; orders/1 has no watermark to start from")
        next.relinquish()
    }

    @Test("a journal of layout version 1 (slots without the lanes' completions) is still read")
    func versionOneJournal() throws {
        let directory = directory()
        let dead = try open(directory)
        let slot = try #require(dead.acquire(TopicPartition("orders", 2), generation: 1))
        slot.bindToCurrentTask()
        slot.begin(42, count: 1)
        #expect(slot.completed(40))
        dead.recordFatalSignalForTesting(SIGSEGV)
        let path = dead.path
        dead.relinquish()
        let file = try #require(FileHandle(forUpdatingAtPath: path))
        try file.seek(toOffset: UInt64(MemoryLayout<sluice_journal_header>.offset(of: \.version)!))
        try file.write(contentsOf: withUnsafeBytes(of: UInt32(1)) { Data($0) })
        try file.close()

        let (next, findings) = try CrashJournal.open(directory: directory, logger: logger)
        next.progress.own(by: owner)
        #expect(findings.first?.inFlight.map(\.description) == ["orders/2@42"])
        #expect(
            progress(next).isEmpty, "version 1 has no completions (the bytes after its slot are not read)")
        next.relinquish()
    }

    @Test(
        "progress is kept by the cluster and group it is of; a file that never said (the process died before its first assignment) is not used"
    )
    func owners() throws {
        let directory = directory()
        let (unowned, _) = try CrashJournal.open(directory: directory, logger: logger)
        let other = try open(directory)
        let elsewhere = StateOwner(cluster: "cluster-2", group: "orders-service")
        other.progress.own(by: elsewhere)  // the first owner named stays
        #expect(other.progress.hasOwner && !unowned.progress.hasOwner)
        unowned.progress.advance(TopicPartition("orders", 0), to: 10, done: [])
        other.progress.advance(TopicPartition("orders", 0), to: 20, done: [])
        unowned.relinquish()
        other.relinquish()
        let (next, _) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(next.predecessorsProgress == [owner: [TopicPartitionOffset(TopicPartition("orders", 0), offset: 20)]])
        next.relinquish()
    }
}
