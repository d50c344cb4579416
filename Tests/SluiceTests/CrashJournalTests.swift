import CSluiceCrash
import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

@Suite("Crash journal: what a dead process was handling, and whose code trapped", .timeLimit(.minutes(1)))
struct CrashJournalTests {
    let logger: Logger = {
        var logger = Logger(label: "sluice.crash-journal-test")
        logger.logLevel = .critical
        return logger
    }()

    func directory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("sluice-journal-\(UUID().uuidString)").path
    }

    /// What the signal handler would record for a fault on the calling thread.
    func attribution(_ journal: CrashJournal) -> (Int32, Int32) {
        var slot: Int32 = -1
        let fault = journal.withBase { sluice_crash_attribute($0, &slot) }
        return (fault, slot)
    }

    @Test(
        "hundreds of hosts in one process (a test run starts that many) each register their journal; none is refused for room"
    )
    func manyJournalsRegister() throws {
        let base = directory()
        var journals: [CrashJournal] = []
        defer {
            for journal in journals { journal.close() }
            try? FileManager.default.removeItem(atPath: base)
        }
        for index in 0..<300 {
            let (journal, _) = try CrashJournal.open(
                directory: "\(base)/\(index)", capacity: 1, progressCapacity: 1, logger: logger)
            journals.append(journal)
            try journal.installSignalHandlers()
        }
        #expect(journals.count == 300)
    }

    @Test(
        "a fault is blamed on a lane's message only while that lane's task runs its handler call on Sluice's executor")
    func attribution() async throws {
        let (journal, _) = try CrashJournal.open(directory: directory(), logger: logger)
        defer { journal.relinquish() }
        let executor = ThreadPoolExecutor(
            name: "test-handlers", threads: 2, maximumThreads: 2, blockedAfter: .seconds(10), clock: SystemHostClock())
        defer { executor.shutdown() }
        let slot = try #require(journal.acquire(TopicPartition("orders", 3), generation: 9))
        let seen = await Task(executorPreference: executor) { () -> [(Int32, Int32)] in
            slot.bindToCurrentTask()
            var seen = [attribution(journal)]
            slot.begin(42, count: 1)
            seen.append(attribution(journal))
            // A suspension inside the call: it may resume on another worker; the blame follows the task.
            await Task.yield()
            seen.append(attribution(journal))
            slot.end()
            seen.append(attribution(journal))
            // A task the handler starts, on the same executor, while the lane is in its call: its faults are
            // not attributable to the lane (it is another task).
            slot.begin(43, count: 1)
            seen.append(await Task(executorPreference: executor) { attribution(journal) }.value)
            slot.end()
            return seen
        }.value
        #expect(seen[0].0 == SLUICE_FAULT_SLUICE, "the lane outside a handler call is Sluice's code")
        #expect(seen[1].0 == SLUICE_FAULT_HANDLER && seen[1].1 >= 0, "inside the call: the lane's slot")
        #expect(seen[2].0 == SLUICE_FAULT_HANDLER && seen[2].1 == seen[1].1, "after a suspension: still that slot")
        #expect(seen[3].0 == SLUICE_FAULT_SLUICE)

        #expect(seen[4].0 == SLUICE_FAULT_UNKNOWN, "a task a handler started is not attributable")
        // A thread of Sluice's own (timers, the control executor): never a message.
        let own = Locked<(Int32, Int32)?>(nil)
        let done = DispatchSemaphore(value: 0)
        startThread(named: "test-own") {
            own.withLock { $0 = attribution(journal) }
            done.signal()
        }
        done.wait()
        #expect(own.withLock { $0 }?.0 == SLUICE_FAULT_SLUICE)
        journal.release(slot)
    }

    @Test("a death in a handler call is found by the next start, once: signal, culprit, and every call in flight")
    func findingAfterDeath() async throws {
        let directory = directory()
        let (dead, _) = try CrashJournal.open(directory: directory, logger: logger)
        let executor = ThreadPoolExecutor(
            name: "test-handlers", threads: 1, maximumThreads: 1, blockedAfter: .seconds(10), clock: SystemHostClock())
        defer { executor.shutdown() }
        let bystander = try #require(dead.acquire(TopicPartition("payments", 1), generation: 4))
        bystander.begin(700, count: 50)
        let culprit = try #require(dead.acquire(TopicPartition("orders", 3), generation: 5))
        await Task(executorPreference: executor) {
            culprit.bindToCurrentTask()
            culprit.begin(42, count: 1)
            // What the fatal-signal handler does on this thread, without dying.
            dead.recordFatalSignalForTesting(SIGILL)
        }.value
        dead.relinquish()

        let (next, findings) = try CrashJournal.open(directory: directory, logger: logger)
        let finding = try #require(findings.first)
        #expect(findings.count == 1)
        #expect(finding.signalName == "SIGILL")
        #expect(finding.fault == .handler)
        #expect(
            finding.culprit
                == CrashFinding.Call(topicPartition: TopicPartition("orders", 3), offset: 42, count: 1, generation: 5))
        #expect(Set(finding.inFlight.map(\.description)) == ["orders/3@42", "payments/1@700+50"])
        next.relinquish()
        let (_, again) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(again.isEmpty, "a journal is read once")
    }

    @Test(
        "no finding after a clean stop, after a death with no fatal signal (kill -9), or from a journal a live process holds"
    )
    func nothingToBlame() throws {
        let directory = directory()
        let (clean, _) = try CrashJournal.open(directory: directory, logger: logger)
        clean.acquire(TopicPartition("orders", 0), generation: 1)!.begin(5, count: 1)
        clean.close()
        clean.relinquish()
        let (killed, first) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(first.isEmpty, "a clean stop blames nothing")
        #expect(killed.path.hasSuffix("crash-journal-0.bin"))
        killed.acquire(TopicPartition("orders", 0), generation: 1)!.begin(6, count: 1)
        killed.relinquish()
        let (live, second) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(second.isEmpty, "a death without a fatal signal blames nothing")
        live.recordFatalSignalForTesting(SIGSEGV)
        let (other, third) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(third.isEmpty, "a live process's journal is not read")
        #expect(other.path != live.path, "a second process takes a file of its own")
        live.relinquish()
        other.relinquish()
        let (_, fourth) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(fourth.map(\.fault) == [.unknown], "a fault on an unknown thread: nobody attributed")
    }

    @Test(
        "an unattributed death while exactly one suspect ran alone names that suspect; with none running alone, all are suspects"
    )
    func elimination() throws {
        let directory = directory()
        let (first, _) = try CrashJournal.open(directory: directory, logger: logger)
        first.acquire(TopicPartition("orders", 1), generation: 1)!.begin(10, count: 1)
        first.acquire(TopicPartition("orders", 2), generation: 1)!.begin(20, count: 1, careful: true)
        first.recordFatalSignalForTesting(SIGSEGV)  // from the test's thread: not attributable
        first.relinquish()
        let (second, findings) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(findings.first?.fault == .eliminated)
        #expect(findings.first?.culprit?.description == "orders/2@20")
        second.acquire(TopicPartition("orders", 1), generation: 1)!.begin(10, count: 1)
        second.acquire(TopicPartition("orders", 2), generation: 1)!.begin(20, count: 1)
        second.recordFatalSignalForTesting(SIGSEGV)
        second.relinquish()
        let (_, again) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(again.first?.fault == .unknown && again.first?.culprit == nil && again.first?.inFlight.count == 2)
    }

    @Test("a file that is not a journal, or of another layout version, is named and left alone")
    func foreignFiles() throws {
        let directory = directory()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Data(repeating: 7, count: 8192).write(to: URL(fileURLWithPath: directory + "/crash-journal-0.bin"))
        let (journal, findings) = try CrashJournal.open(directory: directory, logger: logger)
        #expect(findings.isEmpty)
        #expect(journal.path == directory + "/crash-journal-1.bin", "the foreign file is not taken over")
        #expect(
            FileManager.default.contents(atPath: directory + "/crash-journal-0.bin") == Data(repeating: 7, count: 8192),
            "nor overwritten")
        journal.relinquish()
        let unwritable = "/proc/sluice-cannot-create-this"
        #expect(throws: SluiceError.self) { _ = try CrashJournal.open(directory: unwritable, logger: logger) }
    }
}

@Suite("The state directory's files as someone with access to it could leave them", .timeLimit(.minutes(1)))
struct StateDirectoryTests {
    let logger = Logger(label: "sluice.test")

    @Test(
        "a symbolic link in place of a journal (to a file, or dangling) is not followed; the directory is 0700 and the journal 0600, allocated, not sparse"
    )
    func links() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-links-\(UUID().uuidString)/state"
        ).path
        let outside = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-outside-\(UUID().uuidString)"
        ).path
        try Data(repeating: 1, count: 8192).write(to: URL(fileURLWithPath: outside))
        let (first, _) = try CrashJournal.open(directory: directory, logger: logger)
        first.relinquish()
        try FileManager.default.removeItem(atPath: directory + "/crash-journal-0.bin")
        try FileManager.default.createSymbolicLink(
            atPath: directory + "/crash-journal-0.bin", withDestinationPath: outside)
        try FileManager.default.createSymbolicLink(
            atPath: directory + "/crash-journal-1.bin", withDestinationPath: outside + "-dangling")
        let (journal, _) = try CrashJournal.open(directory: directory, logger: logger)
        defer { journal.relinquish() }
        #expect(journal.path == directory + "/crash-journal-2.bin")
        #expect(
            FileManager.default.contents(atPath: outside) == Data(repeating: 1, count: 8192),
            "the linked file is untouched")
        #expect(
            !FileManager.default.fileExists(atPath: outside + "-dangling"), "a dangling link's target is not created")
        var status = stat()
        #expect(stat(directory, &status) == 0 && status.st_mode & 0o777 == 0o700)
        #expect(stat(journal.path, &status) == 0 && status.st_mode & 0o777 == 0o600)
        #expect(
            Int(status.st_blocks) * 512 >= Int(status.st_size),
            "allocated: a full disk fails at start, not as a SIGBUS later")
    }

    @Test(
        "a quarantines.json left by a run against another cluster holds nothing on a new one (every message handled, the file set aside); the same file of this cluster and group holds its partition at the message"
    )
    func quarantineFileOfAnotherCluster() async throws {
        for owned in [false, true] {
            let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
            let group = HostFixture.uniqueGroup()
            let configuration = try await ConfiguredHostTests.load(cluster, group: group, "topics:\n  orders: {}\n")
            try await ConfiguredHostTests.produce(cluster, count: 10)
            let clusterID =
                owned
                ? try await KafkaClusterID.query(bootstrapServers: cluster.bootstrapServers, timeout: .seconds(10))
                : "an-earlier-cluster"
            try FileManager.default.createDirectory(
                atPath: configuration.stateDirectory, withIntermediateDirectories: true)
            let quarantine = Quarantine(
                offset: 5, crashes: 3, state: .quarantined, signal: "SIGILL", host: "old-host", atMilliseconds: 1_000)
            try LocalQuarantineFile(
                directory: configuration.stateDirectory, owner: StateOwner(cluster: clusterID, group: group),
                logger: logger
            )
            .set(TopicPartition("orders", 0), quarantine)
            let handled = HandledMessages()
            let host = SluiceHost(configuration: configuration, logger: HostFixture.logger)
            host.register("orders", ClosureHandler { message, _ in handled.append(message) })
            let running = ConfiguredHostTests.run(host)
            if owned {
                try await waitUntil("held at the quarantined message") {
                    guard let shard = host.shards.first, case .tripped = shard.state else { return false }
                    return true
                }
                #expect(handled.all.value.map(\.offset).sorted() == Array(0..<5), "this cluster's quarantine applies")
            } else {
                try await waitUntil("every message handled") { handled.distinct == 10 }
                let names = try FileManager.default.contentsOfDirectory(atPath: configuration.stateDirectory)
                #expect(
                    names.contains { $0.hasPrefix("quarantines.json.set-aside-") }
                        && !names.contains("quarantines.json"), "\(names)")
            }
            try await ConfiguredHostTests.stop(host, running)
        }
    }

    @Test(
        "a crash report is the dead process's first one after its start: an older report of the same PID (PID 1 in every container) is not used, a slow one is, a later one is not preferred, and a report is used once"
    )
    func crashReportOfThisDeath() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-reports-\(UUID().uuidString)"
        ).path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func report(_ name: String, _ text: String, at date: Date) throws {
            let json =
                #"{"kind":"crashReport","description":"\#(text)","threads":[{"name":"main","crashed":true,"frames":[]}]}"#
            try json.write(toFile: "\(directory)/\(name)", atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.modificationDate: date], ofItemAtPath: "\(directory)/\(name)")
        }
        let started = Date().addingTimeInterval(-7_200)
        let died = started.addingTimeInterval(3_600)
        try report("OrderService-1-a.json", "an earlier process's death", at: started.addingTimeInterval(-86_400))
        let finding = CrashFinding(
            signal: SIGILL, fault: .handler, culprit: nil, inFlight: [], pid: 1,
            diedAtMilliseconds: Int64(died.timeIntervalSince1970 * 1000),
            startedAtMilliseconds: Int64(started.timeIntervalSince1970 * 1000), journal: "j")
        #expect(CrashReport.find(of: finding, in: directory) == nil, "the earlier PID 1's report is not this death's")
        // Written 90 s after the death was recorded (symbolicating on a loaded machine), and a later PID 1's after it.
        try report("OrderService-1-b.json", "this death", at: died.addingTimeInterval(90))
        try report("OrderService-1-c.json", "a later process's death", at: died.addingTimeInterval(600))
        #expect(CrashReport.find(of: finding, in: directory)?.hasPrefix("this death") == true)
        #expect(
            CrashReport.find(of: finding, in: directory)?.hasPrefix("a later process's death") == true,
            "the first report after the start is this death's; used once")
    }

    @Test(
        "a journal whose header claims four billion slots, in a sparse 64 GiB file, is read up to the largest journal a host makes"
    )
    func hugeCapacity() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-huge-\(UUID().uuidString)"
        ).path
        let (dead, _) = try CrashJournal.open(directory: directory, logger: logger)
        let path = dead.path
        dead.relinquish()
        // A dead process's journal (running, killed by a signal) with a forged slot count.
        let descriptor = open(path, O_RDWR)
        var header = sluice_journal_header()
        _ = pread(descriptor, &header, MemoryLayout<sluice_journal_header>.size, 0)
        header.state = SLUICE_JOURNAL_RUNNING
        header.signal = SIGILL
        header.capacity = UInt32.max
        _ = pwrite(descriptor, &header, MemoryLayout<sluice_journal_header>.size, 0)
        _ = ftruncate(descriptor, 64 << 30)
        close(descriptor)
        let (journal, findings) = try CrashJournal.open(directory: directory, logger: logger)
        journal.relinquish()
        #expect(findings.count == 1 && findings[0].inFlight.isEmpty)
    }
}

@Suite("Quarantines: records, the state file, and what a pipeline does at the message", .timeLimit(.minutes(1)))
struct QuarantineTests {
    let logger: Logger = {
        var logger = Logger(label: "sluice.quarantine-test")
        logger.logLevel = .critical
        return logger
    }()

    @Test(
        "the runtime's JSON crash report is summarized: what happened, the crashed thread's frames, at most 2,000 characters"
    )
    func crashReport() throws {
        let frames = (0..<200).map { index in
            #"{"kind":"returnAddress","description":"frame\#(index) + 12","image":"Service","sourceLocation":{"file":"/src/Handler.swift","line":\#(index)}}"#
        }
        let report =
            #"{"kind":"crashReport","description":"Illegal instruction","threads":[{"name":"main","frames":[]},"#
            + #"{"name":"sluice-handler-1","crashed":true,"frames":["# + frames.joined(separator: ",") + "]}]}"
        let summary = try #require(CrashReport.summarize(Data(report.utf8)))
        #expect(
            summary.hasPrefix(
                "Illegal instruction on thread sluice-handler-1\n  frame0 + 12 (Service) Handler.swift:0\n  frame1 + 12"
            ))
        #expect(summary.count <= CrashReport.limit && summary.hasSuffix("…"))
        #expect(CrashReport.summarize(Data(#"{"kind":"somethingElse"}"#.utf8)) == nil)
        #expect(CrashReport.summarize(Data("not json".utf8)) == nil)
    }

    let sample = Quarantine(
        offset: 42, count: 1, crashes: 2, state: .quarantined, signal: "SIGILL", host: "h1", atMilliseconds: 1_000)

    @Test("quarantine records round-trip; released is nil; bad ones are refused naming the key and the offset")
    func records() throws {
        let topicPartition = TopicPartition("orders", 3)
        let (key, value) = ControlRecord.quarantine(topicPartition, sample).encoded
        #expect(key == "quarantine/orders/3")
        #expect(try ControlRecord.parse(key: key, value: value, offset: 9) == .quarantine(topicPartition, sample))
        let (_, released) = ControlRecord.quarantine(topicPartition, nil).encoded
        #expect(try ControlRecord.parse(key: key, value: released, offset: 10) == .quarantine(topicPartition, nil))
        #expect(try ControlRecord.parse(key: key, value: nil, offset: 11) == .quarantine(topicPartition, nil))
        let bad: [(String, String, String)] = [
            ("quarantine/orders", #"{"v":1,"state":"quarantined","offset":1}"#, "quarantine/TOPIC/PARTITION"),
            ("quarantine/orders/3", #"{"v":1,"state":"sideways","offset":1}"#, "state must be"),
            ("quarantine/orders/3", #"{"v":1,"state":"quarantined"}"#, "needs its offset"),
            ("quarantine/orders/3", #"{"v":2,"state":"quarantined","offset":1}"#, "schema version 2"),
        ]
        for (key, value, says) in bad {
            let error = #expect(throws: ControlRecordRejected.self) {
                try ControlRecord.parse(key: key, value: Array(value.utf8), offset: 77)
            }
            #expect(
                error?.description.contains(says) == true && error?.description.contains("offset 77") == true,
                "\(error?.description ?? "")")
        }
    }

    @Test(
        "an operator's release: retry clears it, skip and deadLetter keep it with who and why; another offset is refused"
    )
    func releases() throws {
        let topicPartition = TopicPartition("orders", 3)
        #expect(
            try sample.released(.retry, offset: sample.offset, who: "ann", reason: "fixed", of: topicPartition) == nil)
        for (release, state) in [(Quarantine.Release.skip, Quarantine.State.skip), (.deadLetter, .deadLetter)] {
            let released = try #require(
                try sample.released(release, offset: nil, who: "ann", reason: "poison", of: topicPartition))
            #expect(
                released.state == state && released.who == "ann" && released.reason == "poison"
                    && released.offset == sample.offset)
            let (key, value) = ControlRecord.quarantine(topicPartition, released).encoded
            #expect(
                try ControlRecord.parse(key: key, value: value, offset: 1) == .quarantine(topicPartition, released),
                "\(state) round-trips")
        }
        let error = #expect(throws: SluiceError.self) {
            _ = try sample.released(.deadLetter, offset: sample.offset + 1, who: nil, reason: nil, of: topicPartition)
        }
        #expect(error?.message == "the quarantine of orders/3 is at offset \(sample.offset), not \(sample.offset + 1)")
    }

    @Test("the state-directory file keeps quarantines across restarts; a damaged one stops the start, naming it")
    func localFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-q-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let owner = StateOwner(cluster: "c1", group: "g")
        let file = try LocalQuarantineFile(directory: directory, owner: owner, logger: logger)
        try file.set(TopicPartition("orders", 3), sample)
        #expect(
            try LocalQuarantineFile(directory: directory, owner: owner, logger: logger).all == [
                TopicPartition("orders", 3): sample
            ])
        try file.set(TopicPartition("orders", 3), nil)
        #expect(try LocalQuarantineFile(directory: directory, owner: owner, logger: logger).all.isEmpty)
        try Data(#"{"cluster": "c1", "group": "g", "quarantines": {"orders": {}}}"#.utf8).write(
            to: URL(fileURLWithPath: directory + "/quarantines.json"))
        let error = #expect(throws: SluiceError.self) {
            _ = try LocalQuarantineFile(directory: directory, owner: owner, logger: logger)
        }
        #expect(
            error?.message.contains("quarantines.json") == true && error?.message.contains("'orders'") == true,
            "\(error?.message ?? "")")
    }

    @Test(
        "a quarantine file of another cluster, of another group, or naming none (written before files did) is set aside whole: none of it applies, nothing of it is lost"
    )
    func localFileOfAnotherOwner() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-q-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let here = StateOwner(cluster: "new-cluster", group: "g")
        for other in [
            StateOwner(cluster: "old-cluster", group: "g"), StateOwner(cluster: "new-cluster", group: "other-group"),
            nil,
        ] as [StateOwner?] {
            if let other {
                try LocalQuarantineFile(directory: directory, owner: other, logger: logger).set(
                    TopicPartition("orders", 0), sample)
            } else {
                // The file as hosts wrote it before it named its owner.
                try JSONEncoder().encode(["orders/0": sample]).write(
                    to: URL(fileURLWithPath: directory + "/quarantines.json"))
            }
            let written = try Data(contentsOf: URL(fileURLWithPath: directory + "/quarantines.json"))
            let file = try LocalQuarantineFile(directory: directory, owner: here, logger: logger)
            #expect(
                file.all.isEmpty,
                "the quarantines of \(other.map { "\($0)" } ?? "no named owner") do not apply on \(here)")
            #expect(!FileManager.default.fileExists(atPath: directory + "/quarantines.json"))
            let setAside = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
                $0.hasPrefix("quarantines.json.set-aside-")
            }
            #expect(
                setAside.count == 1
                    && (try? Data(contentsOf: URL(fileURLWithPath: directory + "/" + setAside[0]))) == written,
                "kept as it was")
            for name in setAside { try FileManager.default.removeItem(atPath: directory + "/" + name) }
        }
    }

    @Test(
        "a quarantine of another message at its offset (the topic was deleted and recreated) is set aside: the message there is handled"
    )
    func otherIncarnation() async throws {
        var quarantine = sample
        quarantine.offset = 4
        // The message that killed the process had this timestamp; the one at offset 4 now has 1_700_000_000_004.
        quarantine.messageTimestamp = 1_600_000_000_004
        let (held, handledHeld, heldPipeline) = await run(quarantine, then: .stop)
        #expect(
            held == .sourceEnded(drainTimedOut: false) && handledHeld == Array(0..<10) && heldPipeline.watermark == 10)
        quarantine.state = .skip
        let (skipped, handledSkipped, skipPipeline) = await run(quarantine, then: .stop)
        #expect(
            skipped == .sourceEnded(drainTimedOut: false) && handledSkipped == Array(0..<10)
                && skipPipeline.counters.skipped == 0)
        // The same message: applied.
        quarantine.messageTimestamp = 1_700_000_000_004
        let (same, handledSame, _) = await run(quarantine, then: .stop)
        #expect(same == .sourceEnded(drainTimedOut: false) && handledSame == [0, 1, 2, 3, 5, 6, 7, 8, 9])
    }

    func run(_ quarantine: Quarantine, then: TopicConfiguration.CrashAction, deadLetters: RecordingDeadLetters? = nil)
        async -> (ShardPipeline.Outcome, [Int64], ShardPipeline)
    {
        var configuration = TopicConfiguration()
        configuration.onCrash.then = then
        if then == .deadLetter || deadLetters != nil { configuration.deadLetterTopic = "t.dlq" }
        let handled = Locked<[Int64]>([])
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(ClosureHandler { message, _ in handled.withLock { $0.append(message.offset) } }),
            deadLetters: deadLetters, quarantine: quarantine)
        let outcome = await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<10)]))
        return (outcome, handled.withLock { $0 }, pipeline)
    }

    @Test(
        "at a quarantined message: stop holds the shard there, deadLetter writes it and goes on, skip commits it, counting calls the handler"
    )
    func pipelineAtTheMessage() async throws {
        var quarantine = sample
        quarantine.offset = 4
        let (held, handledHeld, heldPipeline) = await run(quarantine, then: .stop)
        #expect(handledHeld == [0, 1, 2, 3], "nothing at or past it is handled")
        guard case .crashed(let crash) = held, case .quarantined = crash.reason else {
            Issue.record("expected a quarantine crash, got \(held)")
            return
        }
        #expect(crash.offset == 4 && heldPipeline.watermark == 4, "held at the message, committed up to it")

        let sink = RecordingDeadLetters()
        let (dead, handledDead, deadPipeline) = await run(quarantine, then: .deadLetter, deadLetters: sink)
        #expect(dead == .sourceEnded(drainTimedOut: false))
        #expect(handledDead == [0, 1, 2, 3, 5, 6, 7, 8, 9])
        #expect(
            sink.written.withLock { $0.map(\.0) } == [4] && deadPipeline.watermark == 10
                && deadPipeline.counters.deadLettered == 1)

        quarantine.state = .skip
        let (skipped, handledSkipped, skipPipeline) = await run(quarantine, then: .stop)
        #expect(
            skipped == .sourceEnded(drainTimedOut: false) && handledSkipped == [0, 1, 2, 3, 5, 6, 7, 8, 9]
                && skipPipeline.counters.skipped == 1)

        // Released by an operator to the dead-letter topic: written with its crash report, whatever onCrash.then says.
        quarantine.state = .deadLetter
        let released = RecordingDeadLetters()
        let (releasedOutcome, handledReleased, releasedPipeline) = await run(
            quarantine, then: .stop, deadLetters: released)
        #expect(
            releasedOutcome == .sourceEnded(drainTimedOut: false) && handledReleased == [0, 1, 2, 3, 5, 6, 7, 8, 9])
        #expect(
            released.written.withLock { $0.map(\.0) } == [4] && releasedPipeline.counters.deadLettered == 1
                && releasedPipeline.watermark == 10)

        quarantine.state = .counting
        let (counting, handledCounting, _) = await run(quarantine, then: .stop)
        #expect(
            counting == .sourceEnded(drainTimedOut: false) && handledCounting == Array(0..<10),
            "below onCrash.after the handler is called again")
    }

    @Test(
        "held at a quarantined message with ordering key: every earlier message of the other lanes is done first, so the commit reaches it"
    )
    func heldAfterEarlierLanes() async throws {
        var configuration = TopicConfiguration()
        configuration.ordering = .key
        configuration.processors = 2
        let handled = Locked<Set<Int64>>([])
        // Two keys: even offsets on one lane, odd on the other; the odd lane is slow, so the even lane reaches
        // the quarantined offset 4 while 1 and 3 are still to do.
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { message, _ in
                    if message.offset % 2 == 1 { try await Task.sleep(for: .milliseconds(30)) }
                    handled.withLock { _ = $0.insert(message.offset) }
                }),
            quarantine: Quarantine(
                offset: 4, crashes: 1, state: .quarantined, signal: "SIGILL", host: "h", atMilliseconds: 0))
        let outcome = await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<8, keys: 2)]))
        guard case .crashed(let crash) = outcome, case .quarantined = crash.reason else {
            Issue.record("expected the shard held at the quarantine, got \(outcome)")
            return
        }
        #expect(crash.offset == 4)
        #expect(handled.value.isSuperset(of: [0, 1, 2, 3]) && !handled.value.contains(4))
        #expect(pipeline.watermark == 4, "committed up to the quarantined message")
    }

    @Test("suspects are handled one at a time across every shard of the process; the others run in parallel as usual")
    func suspectsAlone() async throws {
        var configuration = TopicConfiguration()
        configuration.ordering = .key
        configuration.processors = 4
        let inSuspectCall = Atomic<Int>(0)
        let overlap = Atomic<Bool>(false)
        let handled = Locked<[Int64]>([])
        let suspects = Quarantine(
            offset: 10, count: 20, crashes: 1, state: .suspect, signal: "SIGSEGV", host: "h", atMilliseconds: 0)
        // One host's gate, shared by its shards.
        let gate = CarefulGate(clock: SystemHostClock())
        let pipelines = (0..<2).map { _ in
            PipelineFixture.pipeline(
                configuration,
                handler: .message(
                    ClosureHandler { message, _ in
                        let suspect = suspects.range.contains(message.offset)
                        if suspect, inSuspectCall.add(1, ordering: .sequentiallyConsistent).newValue > 1 {
                            overlap.store(true, ordering: .relaxed)
                        }
                        try await Task.sleep(for: .milliseconds(1))
                        if suspect { inSuspectCall.subtract(1, ordering: .sequentiallyConsistent) }
                        handled.withLock { $0.append(message.offset) }
                    }), quarantine: suspects, carefulGate: gate)
        }
        await withTaskGroup(of: ShardPipeline.Outcome.self) { group in
            for pipeline in pipelines {
                group.addTask {
                    await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<40, keys: 8)]))
                }
            }
            for await outcome in group { #expect(outcome == .sourceEnded(drainTimedOut: false)) }
        }
        let overlapped = overlap.load(ordering: .relaxed)
        #expect(!overlapped, "never two suspects in handler calls at once")
        #expect(handled.withLock { $0.count } == 80, "every message handled, suspects included")
    }
}

@Suite("Crash containment at start: what a dead process's journal leads to", .timeLimit(.minutes(1)))
struct CrashContainmentStartTests {
    let logger: Logger = {
        var logger = Logger(label: "sluice.containment-test")
        logger.logLevel = .critical
        return logger
    }()

    /// A journal left by a process that died of SIGILL, with a call in flight on orders/3@42, the fault on
    /// a thread of the given kind.
    func deadJournal(in directory: String, faultOn thread: String) async throws {
        let (dead, _) = try CrashJournal.open(directory: directory, logger: logger)
        let executor = ThreadPoolExecutor(
            name: "test-handlers", threads: 1, maximumThreads: 1, blockedAfter: .seconds(10), clock: SystemHostClock())
        defer { executor.shutdown() }
        let slot = try #require(dead.acquire(TopicPartition("orders", 3), generation: 1))
        switch thread {
        case "handler":
            await Task(executorPreference: executor) {
                slot.bindToCurrentTask()
                slot.begin(42, count: 1, timestamp: 1_700_000_000_042)
                dead.recordFatalSignalForTesting(SIGILL)
            }.value
        case "sluice":
            slot.begin(42, count: 1)
            let done = DispatchSemaphore(value: 0)
            startThread(named: "test-sluice") {
                dead.recordFatalSignalForTesting(SIGILL)
                done.signal()
            }
            done.wait()
        default:
            slot.begin(42, count: 1)
            dead.recordFatalSignalForTesting(SIGILL)
        }
        dead.relinquish()
    }

    @Test(
        "a trap in a handler call quarantines its message; one in Sluice's own code blames nothing; one on an unknown thread makes suspects"
    )
    func outcomes() async throws {
        for (thread, expected) in [("handler", Quarantine.State.quarantined), ("sluice", nil), ("unknown", .suspect)]
            as [(String, Quarantine.State?)]
        {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
                "sluice-start-\(UUID().uuidString)"
            ).path
            try await deadJournal(in: directory, faultOn: thread)
            var configuration = SluiceConfiguration(
                kafka: .init(bootstrap: "unused:1", group: "g"), topics: ["orders": TopicConfiguration()])
            configuration.stateDirectory = directory
            let containment = try await CrashContainment.start(
                configuration: configuration, control: nil, host: "h", clusterID: { "c1" }, logger: logger)
            let quarantine = containment.quarantine(for: TopicPartition("orders", 3))
            #expect(quarantine?.state == expected, "fault on a \(thread) thread: \(String(describing: quarantine))")
            if expected != nil { #expect(quarantine?.offset == 42 && quarantine?.signal == "SIGILL") }
            if expected == .quarantined {
                #expect(quarantine?.messageTimestamp == 1_700_000_000_042, "the message's timestamp is kept with it")
            }
            let kept = try LocalQuarantineFile(
                directory: directory, owner: StateOwner(cluster: "c1", group: "g"), logger: logger)
            #expect(
                kept.all[TopicPartition("orders", 3)]?.state == expected,
                "kept in the state directory, for this cluster and group")
            containment.journal.relinquish()
        }
    }
}
