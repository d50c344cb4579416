import CCallgrind
import Foundation
import Logging
import Sluice
import SluiceKafka

/// `sluice bench --instructions`: instructions per message under valgrind's callgrind, a figure that does not move
/// with the load of a shared machine the way CPU time does (issue "Performance you can trust").
///
/// The broker and the preload run as for the other cases; each run of a case is then a child process,
/// `valgrind --tool=callgrind --instr-atstart=no <this executable> bench --instruction-case NAME`, which joins
/// a fresh group on the preloaded topic and switches callgrind's instrumentation on at its first message and
/// off at its last (valgrind client requests, CCallgrind), so joining, fetching the first batch and shutting
/// down are left out as they are from the CPU figure. Its output file gives the instructions per object.
///
/// Two things valgrind 3.19 (Debian bookworm's) cannot take as they are, and what is done about them:
/// - It cannot read the DWARF 5 debug information swiftc writes (forms strx1 and addrx) and gives up; the
///   child runs a copy of this executable without it (`objcopy --strip-debug`; the symbols stay, so callgrind
///   still names every function).
/// - Its wrapper of `rt_sigsuspend` writes into the caller's signal mask, and libdispatch's main thread (every
///   Swift program with an async main parks there, in `_dispatch_sigsuspend`) passes a mask in read-only
///   memory: valgrind dies of SIGSEGV. The child is given a `sigsuspend` (LD_PRELOAD, compiled here with cc)
///   that copies the mask to the stack first, which is the same call for the kernel.
extension BenchCommand {
    /// The cases measured when --only is not given.
    static let instructionCases = ["a1", "b", "c", "d", "p"]

    /// The child's side: runs one case once and prints how many messages it counted instructions over.
    func runInstructionCase(_ key: String, logger: Logger) async throws {
        guard sluice_valgrind_running() > 0 else {
            throw BenchError(
                "--instruction-case runs under valgrind's callgrind, started by sluice bench --instructions")
        }
        guard let cluster = bootstrap else { throw BenchError("--instruction-case needs --bootstrap") }
        let perPartition = try await partitionCounts(bootstrap: cluster, logger: logger)
        let healthy = messages - perPartition[0, default: 0]
        let window = MeasurementWindow(
            opened: { sluice_callgrind_start_instrumentation() },
            closed: { sluice_callgrind_stop_instrumentation() })
        guard
            let chosen = throughputCases(cluster, healthy: healthy, window: window, logger: logger)
                .first(where: { $0.key == key })
        else { throw BenchError("--instruction-case: no case '\(key)'") }
        let expected = key == "e" ? healthy : messages
        let (count, _, _) = try await chosen.body()
        guard count == expected else {
            throw BenchError("case \(key) read \(count) of \(expected) messages within \(caseTimeout)")
        }
        print("messages=\(count)")
    }

    /// The bench's side: the broker, the preload, then each case --runs times under callgrind; prints a table.
    func runInstructions(logger: Logger) async throws {
        let tools = try CallgrindTools()
        let directory =
            callgrindOutput
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("sluice-callgrind-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { if callgrindOutput == nil { try? FileManager.default.removeItem(atPath: directory) } }
        let program = try tools.copyWithoutDebugInformation(of: ProcessSpawn.currentExecutable(), into: directory)
        let shim = try tools.sigsuspendShim(in: directory)
        let names = try instructionCaseKeys()

        let broker = try ChildBroker(topics: caseTopics)
        defer { broker.stop() }
        note("preloading \(messages) messages of \(messageBytes) bytes over \(partitions) partitions")
        try preload(bootstrap: broker.bootstrap, fixedBatches: true)

        var results: [String: [InstructionRun]] = [:]
        for run in 1...runs {
            for key in names {
                let file = "\(directory)/callgrind.\(key).\(run)"
                let started = ContinuousClock.now
                let count = try countInstructions(
                    of: key, cluster: broker.bootstrap, tools: tools, program: program, shim: shim, output: file)
                let profile = try CallgrindProfile(text: String(contentsOfFile: file, encoding: .utf8))
                if let summary = profile.summary, summary != profile.total {
                    throw BenchError("\(file): the costs add up to \(profile.total), its summary says \(summary)")
                }
                let result = InstructionRun(messages: count, owners: profile.byOwner(executable: program))
                results[key, default: []].append(result)
                note(
                    "\(key) run \(run): \(String(format: "%.0f", result.perMessage)) instructions per message over \(count) messages (\(Int((ContinuousClock.now - started).seconds)) s under callgrind)"
                )
            }
        }
        let titles = Dictionary(
            throughputCases("", healthy: 0, logger: logger).map { ($0.key, $0.name) }, uniquingKeysWith: { a, _ in a })
        print(
            InstructionTable(order: names, titles: titles, runs: results).render(
                heading:
                    "Instructions per message (valgrind callgrind, \(messages) \(messageBytes)-byte messages over \(partitions) partitions, \(runs) runs each; counted from each case's first message to its last)"
            ))
        if callgrindOutput != nil { print("callgrind output: \(directory) (callgrind_annotate FILE)") }
    }

    /// The cases --only names (exactly: `b` is b alone), or the default ones; each must exist.
    func instructionCaseKeys() throws -> [String] {
        let known = throughputCases("", healthy: 0, logger: Logger(label: "unused")).map(\.key)
        let names = only.map { $0.split(separator: ",").flatMap { $0 == "a" ? ["a1", "a2"] : [String($0)] } }
        for name in names ?? [] where !known.contains(name) {
            throw BenchError(
                "--instructions --only: no throughput case '\(name)'; they are \(known.joined(separator: ", "))")
        }
        return names ?? Self.instructionCases
    }

    /// Runs `key` once in a child under callgrind; returns the messages it counted over.
    func countInstructions(
        of key: String, cluster: String, tools: CallgrindTools, program: String, shim: String, output: String
    ) throws -> Int {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tools.valgrind)
        process.arguments =
            [
                "--tool=callgrind", "--instr-atstart=no", "--fair-sched=yes", "--callgrind-out-file=\(output)",
                "--log-file=\(output).valgrind.log", program, "bench", "--instruction-case", key, "--bootstrap",
                cluster, "--partitions", "\(partitions)", "--messages", "\(messages)", "--message-bytes",
                "\(messageBytes)", "--memory-budget", "\(memoryBudgetMiB)", "--batch-timeout-ms", "\(batchTimeoutMs)",
            ]
            + consumerProperty.flatMap { ["--consumer-property", $0] }
            + producerProperty.flatMap { ["--producer-property", $0] }
        var environment = ProcessInfo.processInfo.environment
        environment["LD_PRELOAD"] = shim
        process.environment = environment
        let stdout = Pipe()
        process.standardOutput = stdout
        guard FileManager.default.createFile(atPath: "\(output).log", contents: nil) else {
            throw BenchError("cannot create \(output).log")
        }
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(output).log"))
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0,
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("messages=") }),
            let count = Int(line.dropFirst("messages=".count))
        else {
            let log = (try? String(contentsOfFile: "\(output).log", encoding: .utf8)) ?? ""
            let valgrindLog = (try? String(contentsOfFile: "\(output).valgrind.log", encoding: .utf8)) ?? ""
            let tails: [Substring] =
                Array(log.split(separator: "\n").suffix(12)) + ["(valgrind:)"]
                + Array(valgrindLog.split(separator: "\n").suffix(4))
            throw BenchError(
                "case \(key) under callgrind exited \(process.terminationStatus): " + tails.joined(separator: "\n"))
        }
        return count
    }
}

/// One run of a case under callgrind.
struct InstructionRun: Sendable {
    var messages: Int
    var owners: [CallgrindProfile.Owner: UInt64]
    var total: UInt64 { owners.values.reduce(0, +) }
    var perMessage: Double { Double(total) / Double(max(messages, 1)) }
    func perMessage(_ owner: CallgrindProfile.Owner) -> Double {
        Double(owners[owner] ?? 0) / Double(max(messages, 1))
    }
}

/// The tools --instructions runs, found on the PATH.
struct CallgrindTools: Sendable {
    let valgrind: String
    let objcopy: String
    let compiler: String

    init() throws {
        func find(_ names: [String]) -> String? {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
            for directory in path.split(separator: ":") {
                for name in names where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
                    return "\(directory)/\(name)"
                }
            }
            return nil
        }
        guard let valgrind = find(["valgrind"]) else {
            throw BenchError("--instructions needs valgrind on the PATH (Debian: apt-get install valgrind)")
        }
        guard let objcopy = find(["objcopy", "llvm-objcopy"]) else {
            throw BenchError("--instructions needs objcopy on the PATH (Debian: apt-get install binutils)")
        }
        guard let compiler = find(["cc", "clang", "gcc"]) else {
            throw BenchError("--instructions needs a C compiler (cc, clang or gcc) on the PATH")
        }
        self.valgrind = valgrind
        self.objcopy = objcopy
        self.compiler = compiler
    }

    /// A copy of `executable` without its DWARF sections, which valgrind 3.19 cannot read.
    func copyWithoutDebugInformation(of executable: String, into directory: String) throws -> String {
        let copy = "\(directory)/sluice-without-debug-information"
        try run(objcopy, ["--strip-debug", executable, copy])
        return copy
    }

    /// The preload that passes `sigsuspend` a writable copy of its mask (see `runInstructions`).
    func sigsuspendShim(in directory: String) throws -> String {
        let source = "\(directory)/sigsuspend-copy.c"
        let library = "\(directory)/sigsuspend-copy.so"
        try """
        #define _GNU_SOURCE
        #include <signal.h>
        #include <sys/syscall.h>
        #include <unistd.h>

        // valgrind's rt_sigsuspend wrapper writes into the mask it is given; libdispatch passes one in
        // read-only memory. The kernel sees the same call.
        int sigsuspend(const sigset_t *mask) {
            sigset_t copy = *mask;
            return (int)syscall(SYS_rt_sigsuspend, &copy, _NSIG / 8);
        }

        """.write(toFile: source, atomically: true, encoding: .utf8)
        try run(compiler, ["-shared", "-fPIC", "-O2", "-o", library, source])
        return library
    }

    private func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw BenchError("\(tool) \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(text)")
        }
    }
}

/// The table --instructions prints: per case, the median run's instructions per message in total and by owner,
/// the spread of its runs, and the ratio of its total to raw librdkafka's (the cheaper of a1 and a2 that ran).
struct InstructionTable {
    let order: [String]
    let titles: [String: String]
    let runs: [String: [InstructionRun]]

    /// The run with the median total.
    func median(_ key: String) -> InstructionRun? {
        guard let all = runs[key], !all.isEmpty else { return nil }
        return all.sorted { $0.perMessage < $1.perMessage }[all.count / 2]
    }

    /// (max - min) / median of a case's totals, in percent.
    func spread(_ key: String) -> Double {
        guard let all = runs[key]?.map(\.perMessage), all.count > 1, let middle = median(key)?.perMessage,
            middle > 0
        else { return 0 }
        return (all.max()! - all.min()!) / middle * 100
    }

    var raw: Double? { ["a1", "a2"].compactMap { median($0)?.perMessage }.min() }

    func render(heading: String) -> String {
        var lines = [heading]
        let owners = CallgrindProfile.Owner.allCases
        lines.append(
            "case".padding(toLength: 8, withPad: " ", startingAt: 0) + column("total") + column("spread")
                + owners.map { column($0.rawValue, width: 15) }.joined() + column("against raw", width: 13))
        for key in order {
            guard let run = median(key) else { continue }
            let ratio = raw.map { String(format: "%.3f", run.perMessage / $0) } ?? "-"
            lines.append(
                key.padding(toLength: 8, withPad: " ", startingAt: 0) + column(String(format: "%.0f", run.perMessage))
                    + column(String(format: "%.2f %%", spread(key)))
                    + owners.map { column(String(format: "%.0f", run.perMessage($0)), width: 15) }.joined()
                    + column(ratio, width: 13))
        }
        for key in order { if let title = titles[key] { lines.append("  \(title)") } }
        if let raw {
            let ratios = order.filter { !$0.hasPrefix("a") }.compactMap { key in
                median(key).map { "\(key)/a=\(String(format: "%.3f", $0.perMessage / raw))" }
            }
            if !ratios.isEmpty { lines.append("instruction ratios: " + ratios.joined(separator: " ")) }
        }
        return lines.joined(separator: "\n")
    }

    private func column(_ text: String, width: Int = 12) -> String {
        String(repeating: " ", count: max(1, width - text.count)) + text
    }
}
