import ArgumentParser
import Dispatch
import Foundation
import Logging
import Metrics
import Prometheus
import Sluice
import SluiceAdmin
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `sluice bench`: the host against raw librdkafka in one run. Its own target, as NIO and swift-kafka-client keep
/// their benchmarks apart; the `sluice` executable lists it as a subcommand (its child processes are `sluice`).
public struct BenchCommand: AsyncParsableCommand, Sendable {
    public static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract:
            "Measure the host against raw librdkafka in one run, on the embedded cluster (build with -c release).",
        discussion: """
            Preloads a topic with 100-byte messages (--message-bytes) over 10,000 keys, then runs each case --runs times, \
            interleaved: \
            (a) a plain librdkafka consume loop, (b) the host with a no-op handler and ordering: partition \
            (b0 without the crash journal, bm with Prometheus metrics as a service runs them), \
            (c) ordering: key with 8 processors, (p) production defaults (c with per-partition Prometheus metrics, \
            the crash journal, the control plane and the handler timeout), (o, x) a record out per message at \
            least once and exactly once, (d) a batch handler (batches of 500; d50 with a 50 ms batch \
            timeout), (e) the host with one \
            shard crash-looping (healthy shards' rate against b), (f) flag reaction through the flag file, \
            (g) a handler slower than its topic on one partition (how busy flow control keeps it). \
            Prints a table and, last, `ratios: b/a=X c/a=X d/a=X e/b=X`. With --instructions: instructions per \
            message under valgrind's callgrind instead (deterministic where CPU time is not).
            """
    )

    @Option(name: .long, help: "Partitions of the benchmark topic (the mock keeps 5 MiB per partition).")
    var partitions: Int = 32
    @Option(
        name: .customLong("messages"),
        help:
            "Messages preloaded (default 640,000 of 100 bytes, or as many as fit the mock's 5 MiB per partition at --message-bytes)."
    )
    var messagesOption: Int?
    @Option(
        name: .customLong("memory-budget"),
        help: "The hosts' host.memoryBudget in MiB (0: off, buffers bounded by message counts only).")
    var memoryBudgetMiB: Int = 256
    var memoryBudget: Int? { memoryBudgetMiB == 0 ? nil : memoryBudgetMiB << 20 }
    @Flag(
        name: .customLong("per-partition-metrics"), inversion: .prefixedNo,
        help: "With --scale: per-partition metric series (metrics.perPartition).")
    var perPartitionMetrics = true
    @Option(
        name: .long,
        help: "Payload size of the preloaded messages, e.g. 1024 or 65536 (the cases' peak RSS is what to watch).")
    var messageBytes: Int = 100

    /// The mock keeps about 5 MiB of each partition's log: what is preloaded must fit, with the record overhead.
    var messagesPerPartitionThatFit: Int { (9 * (1 << 20) / 2) / (messageBytes + 80) }
    var messages: Int { messagesOption ?? min(640_000, partitions * messagesPerPartitionThatFit) }
    @Option(name: .long, help: "Runs per throughput case.")
    var runs: Int = 3
    @Option(name: .long, help: "Flag changes measured in case f.")
    var flagRuns: Int = 20
    @Option(
        name: .long,
        help:
            "Run only these throughput cases, comma-separated name prefixes (a1, a2, a, b, b0, bm, c, p, o, x, d, d50, e), e.g. to profile one or compare a2,b."
    )
    var only: String?
    @Option(
        name: .long,
        help:
            "Batch timeout of case d in milliseconds. The last, partial batch of each partition waits this long, which on a finite preloaded topic is a tail of the run, not a per-message cost; case d50 shows the same with 50 ms."
    )
    var batchTimeoutMs: Int = 5
    @Option(
        name: .long,
        help:
            "Instead of the cases: one host on this many partitions (4 topics), measuring RSS, time to all shards running and shutdown drain time."
    )
    var scale: Int?
    @Option(
        name: .long,
        help:
            "Instead of the cases: latency from produce to handler start at this steady rate (messages a second), for raw librdkafka, ordering partition and ordering key; p50, p99, p99.9. 0: at half the highest rate this machine carries end to end, measured first (the producer flat out, a raw librdkafka loop consuming)."
    )
    var latency: Int?
    @Option(name: .long, help: "How long the steady producer of --latency runs, in seconds.")
    var latencySeconds: Int = 10
    @Option(
        name: .long,
        help:
            "A librdkafka consumer property for the hosts (kafka.properties), as key=value; repeatable. E.g. queued.min.messages=5000, to measure its effect."
    )
    var consumerProperty: [String] = []
    @Option(
        name: .long,
        help:
            "A librdkafka producer property for the hosts' producer (kafka.producerProperties: output, dead letters), as key=value; repeatable. E.g. linger.ms=0."
    )
    var producerProperty: [String] = []

    @Flag(
        name: .long,
        help:
            "Instead of CPU time: instructions per message, each case (--only; default a1,b,c,d,p) --runs times under valgrind's callgrind, counted from the case's first message to its last, by object (Sluice, librdkafka, the Swift runtime, libc), with ratios against raw librdkafka. Deterministic where CPU time is not. Needs valgrind, objcopy and a C compiler (cc) on the PATH."
    )
    var instructions = false
    @Option(
        name: .long,
        help:
            "With --instructions: keep each run's callgrind output in this directory (callgrind_annotate reads them)."
    )
    var callgrindOutput: String?
    /// A child of --instructions: runs this one case under valgrind against `--bootstrap`'s preloaded topic.
    @Option(name: .long, help: .hidden)
    var instructionCase: String?
    @Option(name: .long, help: .hidden)
    var bootstrap: String?

    @Option(
        name: .long,
        help:
            "Instead of the cases: three host processes in one group under a steady load, and this many flag flips through the CLI; time to every shard off on every host, time to the first message after the flag goes back on, and messages lost or handled twice."
    )
    var fleet: Int?

    @Option(
        name: .long,
        help:
            "Add case w: case b's host as a supervisor of this many worker processes (host.workers), for their cost in CPU per message against case b."
    )
    var workers: Int = 0

    public func validate() throws {
        guard batchTimeoutMs >= 1 else { throw ValidationError("--batch-timeout-ms must be at least 1") }
        guard partitions >= 2 else { throw ValidationError("--partitions must be at least 2") }
        for (option, entries) in [("--consumer-property", consumerProperty), ("--producer-property", producerProperty)]
        {
            for entry in entries where entry.split(separator: "=", maxSplits: 1).count != 2 {
                throw ValidationError("\(option): expected key=value, got '\(entry)'")
            }
        }
        if let latency, latency < 0 {
            throw ValidationError(
                "--latency must be 0 (half the highest rate) or a rate in messages a second, got \(latency)")
        }
        guard (16...1_000_000).contains(messageBytes) else {
            throw ValidationError("--message-bytes must be 16...1000000, got \(messageBytes)")
        }
        guard messages >= partitions * 10 else { throw ValidationError("--messages must be at least 10 per partition") }
        guard messages / partitions <= messagesPerPartitionThatFit else {
            throw ValidationError(
                "--messages: at most \(messagesPerPartitionThatFit) \(messageBytes)-byte messages per partition fit the mock's 5 MiB per partition"
            )
        }
        // The throughput cases' keys, a (both raw loops), and the cases that run after them.
        let known =
            throughputCases("", healthy: 0, logger: Logger(label: "unused")).map(\.key) + ["a", "f", "g", "w", "wt"]
        for name in only?.split(separator: ",") ?? [] where !known.contains(String(name)) {
            throw ValidationError(
                "--only: unknown case '\(name)'; the cases are a1, a2 (or a for both), b (b, b0 and bm), b0, bm, c, p, o, x, d (d and d50), d50, e, f, g, and with --workers w and wt (a trap in one worker)"
            )
        }
        guard (0...SluiceConfiguration.maximumWorkers).contains(workers) else {
            throw ValidationError("--workers must be 0...\(SluiceConfiguration.maximumWorkers), got \(workers)")
        }
    }

    /// Bootstrapped once per process: Prometheus for the cases that measure it (and --scale), none for the rest.
    static let metrics: BenchMetricsFactory = {
        let factory = BenchMetricsFactory()
        MetricsSystem.bootstrap(factory)
        return factory
    }()

    public init() {}

    public func run() async throws {
        _ = Self.metrics
        var logger = Logger(label: "sluice.bench")
        logger.logLevel =
            ProcessInfo.processInfo.environment["SLUICE_BENCH_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .error
        if Self.isBenchWorker() {
            try await runBenchWorker(logger: logger)
            return
        }
        if let instructionCase {
            try await runInstructionCase(instructionCase, logger: logger)
            return
        }
        if instructions {
            try await runInstructions(logger: logger)
            return
        }
        if let scale {
            try await runScale(partitions: scale, logger: logger)
            return
        }
        if let latency {
            try await runLatency(rate: latency, logger: logger)
            return
        }
        if let fleet {
            try await runFleet(flips: fleet, logger: logger)
            return
        }
        // The broker and the preloading producer run as child processes, so this process's memory is the
        // consumer's alone, as in production.
        let broker = try ChildBroker(topics: caseTopics + (workers > 0 ? Self.workerTrapTopics : []))
        defer { broker.stop() }
        let cluster = broker.bootstrap
        note(
            "malloc arenas: "
                + (ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"].map { "MALLOC_ARENA_MAX=\($0)" }
                    ?? "glibc's default (MALLOC_ARENA_MAX unset; the Dockerfile and the Kubernetes manifest set 2)"))
        note("preloading \(messages) messages of \(messageBytes) bytes over \(partitions) partitions")
        try preload(bootstrap: cluster)
        let perPartition = try await partitionCounts(bootstrap: cluster, logger: logger)
        let baselineMegabytes = residentMegabytes()

        let healthy = messages - perPartition[0, default: 0]
        var cases = throughputCases(cluster, healthy: healthy, logger: logger)
        if workers > 0 {
            cases.append(
                BenchCase(name: "w host, no-op, ordering partition, \(workers) worker processes") {
                    try await runWorkers(cluster, logger: logger)
                })
        }
        let selected = only.map { $0.split(separator: ",").map(String.init) }
        let chosen = cases.indices.filter { index in selected?.contains { cases[index].name.hasPrefix($0) } ?? true }
        // Runs are interleaved (a1 a2 b c d e, a1 a2 b ...) so that a slow patch of a shared machine falls
        // on every case alike instead of on one case's runs.
        for run in 1...runs {
            for index in chosen {
                // Let the previous run's teardown (a consumer's librdkafka destroy finishes in the
                // background) settle, so it does not compete with this run for the 2 cores.
                try await Task.sleep(for: .seconds(2))
                resetPeakResident()
                let residentBefore = residentMegabytes()
                let (count, seconds, cpu) = try await cases[index].body()
                // From each case's first message to its last: joining and shutting down are not per-message costs.
                cases[index].cpuPerMillion.append(cpu / Double(max(count, 1)) * 1_000_000)
                cases[index].rates.append(Double(count) / seconds)
                let peak = peakResidentMegabytes()
                cases[index].peak = max(cases[index].peak, peak)
                note(
                    "\(cases[index].name) run \(run): \(Int(Double(count) / seconds)) msg/s, peak RSS \(peak) MB (\(residentBefore) MB before)"
                )
            }
        }
        func medianRate(_ prefix: String) -> Double? {
            cases.first { $0.name.hasPrefix(prefix + " ") && !$0.rates.isEmpty }.map { median($0.rates.sorted()) }
        }
        func cpuPerMillion(_ item: BenchCase) -> Double {
            item.cpuPerMillion.isEmpty ? 0 : median(item.cpuPerMillion.sorted())
        }
        /// The spread of a case's runs: (max - min) / median, in percent.
        func spread(_ values: [Double]) -> Double {
            guard let low = values.min(), let high = values.max(), values.count > 1 else { return 0 }
            let middle = median(values.sorted())
            return middle == 0 ? 0 : (high - low) / middle * 100
        }
        func medianCPU(_ prefix: String) -> Double? {
            cases.first { $0.name.hasPrefix(prefix + " ") && !$0.cpuPerMillion.isEmpty }.map(cpuPerMillion)
        }
        /// CPU per message against raw librdkafka's (the primary ratio: steadier than throughput on a shared
        /// machine); lower is better. Against the cheaper of the two raw loops.
        func cpuRatios() -> String? {
            guard let a = [medianCPU("a1"), medianCPU("a2")].compactMap({ $0 }).min() else { return nil }
            let parts = ["b", "c", "p", "o", "x", "d"].compactMap { name in
                medianCPU(name).map { "\(name)/a=\(String(format: "%.2f", $0 / a))" }
            }
            guard !parts.isEmpty else { return nil }
            var line = "CPU per message ratios: " + parts.joined(separator: " ")
            if let paired = pairedCPURatios() { line += "\n" + paired }
            return line
        }
        /// The same ratios taken run by run (case X's run r against the cheaper raw loop's run r, which ran
        /// seconds before it) and their median and range: a slow patch of the machine that lasts a round
        /// moves both sides of a pair, not one case's median.
        func pairedCPURatios() -> String? {
            func runs(_ prefix: String) -> [Double] {
                cases.first { $0.name.hasPrefix(prefix + " ") }?.cpuPerMillion ?? []
            }
            let a1 = runs("a1")
            let a2 = runs("a2")
            let raw = a1.isEmpty ? a2 : a2.isEmpty ? a1 : zip(a1, a2).map { min($0, $1) }
            guard raw.count > 1 else { return nil }
            let parts = ["b", "c", "p", "o", "x", "d"].compactMap { name -> String? in
                let pairs = zip(runs(name), raw).map { $0 / $1 }.sorted()
                guard !pairs.isEmpty else { return nil }
                return
                    "\(name)/a=\(String(format: "%.2f", median(pairs))) (\(String(format: "%.2f", pairs.first!))-\(String(format: "%.2f", pairs.last!)))"
            }
            return parts.isEmpty
                ? nil : "CPU per message ratios, run by run (median, range): " + parts.joined(separator: " ")
        }
        if only != nil {
            print("\(messageBytes)-byte messages, \(messages) over \(partitions) partitions")
            for item in cases where !item.rates.isEmpty {
                print(
                    "\(item.name): median \(Int(median(item.rates.sorted()))) msg/s (spread \(Int(spread(item.rates))) %), "
                        + "CPU \(String(format: "%.2f", cpuPerMillion(item))) s per M msgs (spread \(Int(spread(item.cpuPerMillion))) %), peak RSS \(item.peak) MB"
                )
            }
            if let line = cpuRatios() { print(line) }
            // The ratios to the faster raw loop, for the cases that ran.
            if let a = [medianRate("a1"), medianRate("a2")].compactMap({ $0 }).max() {
                let parts = ["b", "c", "d"].compactMap { name in
                    medianRate(name).map { "\(name)/a=\(String(format: "%.2f", $0 / a))" }
                }
                if !parts.isEmpty { print("ratios: " + parts.joined(separator: " ")) }
            }
            printJournalCost()
            if selected?.contains("f") == true {
                printFlagReaction(try await flagReaction(cluster, logger: logger))
            }
            if selected?.contains("g") == true {
                printSlowHandler(try await slowHandler(cluster, logger: logger))
            }
            if workers > 0, selected?.contains("wt") == true { try await runWorkerTrap(cluster, logger: logger) }
            return
        }
        let reaction = try await flagReaction(cluster, logger: logger)

        print("")
        print("\(messageBytes)-byte messages, \(messages) over \(partitions) partitions")
        print(
            "case                                                  min msg/s  median msg/s     max msg/s  CPU s/M msgs  CPU spread  peak RSS MB"
        )
        for item in cases {
            let sorted = item.rates.sorted()
            print(
                item.name.padding(toLength: 50, withPad: " ", startingAt: 0)
                    + pad(Int(sorted.first!)) + pad(Int(median(sorted))) + pad(Int(sorted.last!))
                    + String(format: "%14.2f", cpuPerMillion(item))
                    + String(format: "%10.0f %%", spread(item.cpuPerMillion))
                    + pad(item.peak, width: 13))
        }
        printFlagReaction(reaction)
        printSlowHandler(try await slowHandler(cluster, logger: logger))
        print(
            "RSS before the cases (runtime and librdkafka, broker and preload in child processes): \(baselineMegabytes) MB"
        )
        // The ratios divide by the faster plain loop.
        let a = max(medianRate("a1")!, medianRate("a2")!)
        let b = medianRate("b")!
        print(
            String(
                format: "ratios: b/a=%.2f c/a=%.2f d/a=%.2f e/b=%.2f",
                b / a, medianRate("c")! / a, medianRate("d")! / a, medianRate("e")! / b))
        if let line = cpuRatios() { print(line) }
        printJournalCost()
        if workers > 0 { try await runWorkerTrap(cluster, logger: logger) }

        /// The crash journal's cost: case b with it against b0 without, in CPU per message (steadier than
        /// throughput here) and in median throughput.
        func printJournalCost() {
            printCost("crash journal cost (b against b0)", of: "b", against: "b0")
            printCost("Prometheus metrics cost (bm against b)", of: "bm", against: "b")
            printCost("worker processes cost (w against b)", of: "w", against: "b")
        }
        /// What case `with` costs over case `without`, in CPU per message (steadier than throughput here)
        /// and in median throughput.
        func printCost(_ title: String, of with: String, against without: String) {
            guard let withCase = cases.first(where: { $0.name.hasPrefix(with + " ") }),
                let withoutCase = cases.first(where: { $0.name.hasPrefix(without + " ") }),
                !withCase.rates.isEmpty, !withoutCase.rates.isEmpty
            else { return }
            print(
                String(
                    format: "\(title): CPU per message %+.1f %%, median throughput %+.1f %%",
                    (cpuPerMillion(withCase) / cpuPerMillion(withoutCase) - 1) * 100,
                    (median(withCase.rates.sorted()) / median(withoutCase.rates.sorted()) - 1) * 100))
        }
    }
}
