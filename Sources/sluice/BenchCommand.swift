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

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the host against raw librdkafka in one run, on the embedded cluster (build with -c release).",
        discussion: """
            Preloads a topic with 100-byte messages (--message-bytes) over 10,000 keys, then runs each case --runs times, \
            interleaved: \
            (a) a plain librdkafka consume loop, (b) the host with a no-op handler and ordering: partition \
            (b0 without the crash journal, bm with Prometheus metrics as a service runs them), \
            (c) ordering: key with 8 processors, (d) a batch handler (batches of 500; d50 with a 50 ms batch \
            timeout), (e) the host with one \
            shard crash-looping (healthy shards' rate against b), (f) flag reaction through the flag file, \
            (g) a handler slower than its topic on one partition (how busy flow control keeps it). \
            Prints a table and, last, `ratios: b/a=X c/a=X d/a=X e/b=X`.
            """
    )

    @Option(name: .long, help: "Partitions of the benchmark topic (the mock keeps 5 MiB per partition).")
    var partitions: Int = 32
    @Option(name: .customLong("messages"), help: "Messages preloaded (default 640,000 of 100 bytes, or as many as fit the mock's 5 MiB per partition at --message-bytes).")
    var messagesOption: Int?
    @Option(name: .customLong("memory-budget"), help: "The hosts' host.memoryBudget in MiB (0: off, buffers bounded by message counts only).")
    var memoryBudgetMiB: Int = 256
    var memoryBudget: Int? { memoryBudgetMiB == 0 ? nil : memoryBudgetMiB << 20 }
    @Flag(name: .customLong("per-partition-metrics"), inversion: .prefixedNo, help: "With --scale: per-partition metric series (metrics.perPartition).")
    var perPartitionMetrics = true
    @Option(name: .long, help: "Payload size of the preloaded messages, e.g. 1024 or 65536 (the cases' peak RSS is what to watch).")
    var messageBytes: Int = 100

    /// The mock keeps about 5 MiB of each partition's log: what is preloaded must fit, with the record overhead.
    var messagesPerPartitionThatFit: Int { (9 * (1 << 20) / 2) / (messageBytes + 80) }
    var messages: Int { messagesOption ?? min(640_000, partitions * messagesPerPartitionThatFit) }
    @Option(name: .long, help: "Runs per throughput case.")
    var runs: Int = 3
    @Option(name: .long, help: "Flag changes measured in case f.")
    var flagRuns: Int = 20
    @Option(name: .long, help: "Run only these throughput cases, comma-separated name prefixes (a1, a2, a, b, b0, bm, c, d, d50, e), e.g. to profile one or compare a2,b.")
    var only: String?
    @Option(name: .long, help: "Batch timeout of case d in milliseconds. The last, partial batch of each partition waits this long, which on a finite preloaded topic is a tail of the run, not a per-message cost; case d50 shows the same with 50 ms.")
    var batchTimeoutMs: Int = 5
    @Option(name: .long, help: "Instead of the cases: one host on this many partitions (4 topics), measuring RSS, time to all shards running and shutdown drain time.")
    var scale: Int?
    @Option(name: .long, help: "Instead of the cases: latency from produce to handler start at this steady rate (messages a second), for raw librdkafka, ordering partition and ordering key; p50, p99, p99.9. 0: at half the highest rate this machine carries end to end, measured first (the producer flat out, a raw librdkafka loop consuming).")
    var latency: Int?
    @Option(name: .long, help: "How long the steady producer of --latency runs, in seconds.")
    var latencySeconds: Int = 10
    @Option(name: .long, help: "A librdkafka consumer property for the hosts (kafka.properties), as key=value; repeatable. E.g. queued.min.messages=5000, to measure its effect.")
    var consumerProperty: [String] = []

    @Option(name: .long, help: "Instead of the cases: three host processes in one group under a steady load, and this many flag flips through the CLI; time to every shard off on every host, time to the first message after the flag goes back on, and messages lost or handled twice.")
    var fleet: Int?

    func validate() throws {
        guard batchTimeoutMs >= 1 else { throw ValidationError("--batch-timeout-ms must be at least 1") }
        guard partitions >= 2 else { throw ValidationError("--partitions must be at least 2") }
        for entry in consumerProperty where entry.split(separator: "=", maxSplits: 1).count != 2 {
            throw ValidationError("--consumer-property: expected key=value, got '\(entry)'")
        }
        if let latency, latency < 0 { throw ValidationError("--latency must be 0 (half the highest rate) or a rate in messages a second, got \(latency)") }
        guard (16...1_000_000).contains(messageBytes) else { throw ValidationError("--message-bytes must be 16...1000000, got \(messageBytes)") }
        guard messages >= partitions * 10 else { throw ValidationError("--messages must be at least 10 per partition") }
        guard messages / partitions <= messagesPerPartitionThatFit else {
            throw ValidationError("--messages: at most \(messagesPerPartitionThatFit) \(messageBytes)-byte messages per partition fit the mock's 5 MiB per partition")
        }
        for name in only?.split(separator: ",") ?? [] where !["a", "a1", "a2", "b", "b0", "bm", "c", "d", "d50", "e", "f", "g"].contains(name) {
            throw ValidationError("--only: unknown case '\(name)'; the cases are a1, a2 (or a for both), b (b, b0 and bm), b0, bm, c, d (d and d50), d50, e, f and g")
        }
    }

    /// Bootstrapped once per process: Prometheus for the cases that measure it (and --scale), none for the rest.
    static let metrics: BenchMetricsFactory = {
        let factory = BenchMetricsFactory()
        MetricsSystem.bootstrap(factory)
        return factory
    }()

    func run() async throws {
        _ = Self.metrics
        var logger = Logger(label: "sluice.bench")
        logger.logLevel = ProcessInfo.processInfo.environment["SLUICE_BENCH_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .error
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
        let broker = try ChildBroker(topics: ["bench:\(partitions)", "flagbench:1", "slowbench:1"])
        defer { broker.stop() }
        let cluster = broker.bootstrap
        note("malloc arenas: " + (ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"].map { "MALLOC_ARENA_MAX=\($0)" } ?? "glibc's default (MALLOC_ARENA_MAX unset; the Dockerfile and the Kubernetes manifest set 2)"))
        note("preloading \(messages) messages of \(messageBytes) bytes over \(partitions) partitions")
        try preload(bootstrap: cluster)
        let perPartition = try await partitionCounts(bootstrap: cluster, logger: logger)
        let baselineMegabytes = residentMegabytes()

        struct Case {
            let name: String
            let body: () async throws -> (count: Int, seconds: Double, cpu: Double)
            var rates: [Double] = []
            /// CPU seconds per million messages, per run.
            var cpuPerMillion: [Double] = []
            var peak = 0
        }
        var partitionOrdering = TopicConfiguration()
        partitionOrdering.ordering = .partition
        var keyOrdering = TopicConfiguration()
        keyOrdering.ordering = .key
        keyOrdering.processors = 8
        var batching = TopicConfiguration()
        batching.batch = .init(size: 500, timeout: .milliseconds(batchTimeoutMs))
        var batchingSlow = TopicConfiguration()
        batchingSlow.batch = .init(size: 500, timeout: .milliseconds(50))
        var crashing = TopicConfiguration()
        crashing.breaker = .backoff  // restarts forever, 1 s .. 5 min apart
        let healthy = messages - perPartition[0, default: 0]
        var stock = consumerConfiguration(cluster, group: "raw")
        stock.properties = ["queued.min.messages": "100000", "queued.max.messages.kbytes": "65536"]
        let stockSettings = stock
        var cases = [
            Case(name: "a1 raw librdkafka loop, Sluice's settings") {
                let configuration = consumerConfiguration(cluster, group: "raw-\(UUID())")
                let result = try await onThread {
                    try RawConsumeLoop.run(configuration: configuration, topic: "bench", count: messages, timeout: .seconds(120))
                }
                return (result.messages, result.elapsed.seconds, result.cpuSeconds)
            },
            Case(name: "a2 raw librdkafka loop, stock queue settings") {
                var configuration = stockSettings
                configuration.groupID = "raw-\(UUID())"
                let settings = configuration
                let result = try await onThread {
                    try RawConsumeLoop.run(configuration: settings, topic: "bench", count: messages, timeout: .seconds(120))
                }
                return (result.messages, result.elapsed.seconds, result.cpuSeconds)
            },
            Case(name: "b host, no-op, ordering partition") {
                try await runHost(cluster, settings: partitionOrdering, handler: .message, logger: logger)
            },
            Case(name: "b0 host, no-op, ordering partition, no crash journal") {
                try await runHost(cluster, settings: partitionOrdering, handler: .message, crashJournal: false, logger: logger)
            },
            Case(name: "bm host, no-op, ordering partition, Prometheus metrics") {
                try await runHost(cluster, settings: partitionOrdering, handler: .message, prometheus: true, logger: logger)
            },
            Case(name: "c host, no-op, ordering key x8") {
                try await runHost(cluster, settings: keyOrdering, handler: .message, logger: logger)
            },
            Case(name: "d host, batch handler (500, timeout \(batchTimeoutMs) ms)") {
                try await runHost(cluster, settings: batching, handler: .batch, logger: logger)
            },
            Case(name: "d50 host, batch handler (500, timeout 50 ms)") {
                try await runHost(cluster, settings: batchingSlow, handler: .batch, logger: logger)
            },
            Case(name: "e host, partition 0 crash-looping (healthy shards)") {
                try await runHost(cluster, settings: crashing, handler: .crashPartitionZero, expected: healthy, logger: logger)
            },
        ]
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
                note("\(cases[index].name) run \(run): \(Int(Double(count) / seconds)) msg/s, peak RSS \(peak) MB (\(residentBefore) MB before)")
            }
        }
        func medianRate(_ prefix: String) -> Double? {
            cases.first { $0.name.hasPrefix(prefix + " ") && !$0.rates.isEmpty }.map { median($0.rates.sorted()) }
        }
        func cpuPerMillion(_ item: Case) -> Double { item.cpuPerMillion.isEmpty ? 0 : median(item.cpuPerMillion.sorted()) }
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
            let parts = ["b", "c", "d"].compactMap { name in medianCPU(name).map { "\(name)/a=\(String(format: "%.2f", $0 / a))" } }
            guard !parts.isEmpty else { return nil }
            var line = "CPU per message ratios: " + parts.joined(separator: " ")
            if let paired = pairedCPURatios() { line += "\n" + paired }
            return line
        }
        /// The same ratios taken run by run (case X's run r against the cheaper raw loop's run r, which ran
        /// seconds before it) and their median and range: a slow patch of the machine that lasts a round
        /// moves both sides of a pair, not one case's median.
        func pairedCPURatios() -> String? {
            func runs(_ prefix: String) -> [Double] { cases.first { $0.name.hasPrefix(prefix + " ") }?.cpuPerMillion ?? [] }
            let a1 = runs("a1")
            let a2 = runs("a2")
            let raw = a1.isEmpty ? a2 : a2.isEmpty ? a1 : zip(a1, a2).map { min($0, $1) }
            guard raw.count > 1 else { return nil }
            let parts = ["b", "c", "d"].compactMap { name -> String? in
                let pairs = zip(runs(name), raw).map { $0 / $1 }.sorted()
                guard !pairs.isEmpty else { return nil }
                return "\(name)/a=\(String(format: "%.2f", median(pairs))) (\(String(format: "%.2f", pairs.first!))-\(String(format: "%.2f", pairs.last!)))"
            }
            return parts.isEmpty ? nil : "CPU per message ratios, run by run (median, range): " + parts.joined(separator: " ")
        }
        if only != nil {
            print("\(messageBytes)-byte messages, \(messages) over \(partitions) partitions")
            for item in cases where !item.rates.isEmpty {
                print(
                    "\(item.name): median \(Int(median(item.rates.sorted()))) msg/s (spread \(Int(spread(item.rates))) %), "
                        + "CPU \(String(format: "%.2f", cpuPerMillion(item))) s per M msgs (spread \(Int(spread(item.cpuPerMillion))) %), peak RSS \(item.peak) MB")
            }
            if let line = cpuRatios() { print(line) }
            // The ratios to the faster raw loop, for the cases that ran.
            if let a = [medianRate("a1"), medianRate("a2")].compactMap({ $0 }).max() {
                let parts = ["b", "c", "d"].compactMap { name in medianRate(name).map { "\(name)/a=\(String(format: "%.2f", $0 / a))" } }
                if !parts.isEmpty { print("ratios: " + parts.joined(separator: " ")) }
            }
            printJournalCost()
            if selected?.contains("f") == true {
                printFlagReaction(try await flagReaction(cluster, logger: logger))
            }
            if selected?.contains("g") == true {
                printSlowHandler(try await slowHandler(cluster, logger: logger))
            }
            return
        }
        let reaction = try await flagReaction(cluster, logger: logger)

        print("")
        print("\(messageBytes)-byte messages, \(messages) over \(partitions) partitions")
        print("case                                                  min msg/s  median msg/s     max msg/s  CPU s/M msgs  CPU spread  peak RSS MB")
        for item in cases {
            let sorted = item.rates.sorted()
            print(
                item.name.padding(toLength: 50, withPad: " ", startingAt: 0)
                    + pad(Int(sorted.first!)) + pad(Int(median(sorted))) + pad(Int(sorted.last!))
                    + String(format: "%14.2f", cpuPerMillion(item)) + String(format: "%10.0f %%", spread(item.cpuPerMillion))
                    + pad(item.peak, width: 13))
        }
        printFlagReaction(reaction)
        printSlowHandler(try await slowHandler(cluster, logger: logger))
        print("RSS before the cases (runtime and librdkafka, broker and preload in child processes): \(baselineMegabytes) MB")
        // The ratios divide by the faster plain loop.
        let a = max(medianRate("a1")!, medianRate("a2")!)
        let b = medianRate("b")!
        print(String(
            format: "ratios: b/a=%.2f c/a=%.2f d/a=%.2f e/b=%.2f",
            b / a, medianRate("c")! / a, medianRate("d")! / a, medianRate("e")! / b))
        if let line = cpuRatios() { print(line) }
        printJournalCost()

        /// The crash journal's cost: case b with it against b0 without, in CPU per message (steadier than
        /// throughput here) and in median throughput.
        func printJournalCost() {
            printCost("crash journal cost (b against b0)", of: "b", against: "b0")
            printCost("Prometheus metrics cost (bm against b)", of: "bm", against: "b")
        }
        /// What case `with` costs over case `without`, in CPU per message (steadier than throughput here)
        /// and in median throughput.
        func printCost(_ title: String, of with: String, against without: String) {
            guard let withCase = cases.first(where: { $0.name.hasPrefix(with + " ") }),
                let withoutCase = cases.first(where: { $0.name.hasPrefix(without + " ") }),
                !withCase.rates.isEmpty, !withoutCase.rates.isEmpty
            else { return }
            print(String(
                format: "\(title): CPU per message %+.1f %%, median throughput %+.1f %%",
                (cpuPerMillion(withCase) / cpuPerMillion(withoutCase) - 1) * 100,
                (median(withCase.rates.sorted()) / median(withoutCase.rates.sorted()) - 1) * 100))
        }
    }

    // MARK: Cases

    enum HandlerKind { case message, batch, crashPartitionZero }

    func runHost(
        _ cluster: String, settings: TopicConfiguration, handler: HandlerKind, expected: Int? = nil, crashJournal: Bool = true,
        prometheus: Bool = false, logger: Logger
    ) async throws -> (count: Int, seconds: Double, cpu: Double) {
        // The host's metric handles are made as it starts: Prometheus as a service runs it, or none.
        Self.metrics.setPrometheus(prometheus)
        defer { Self.metrics.setPrometheus(false) }
        let target = expected ?? messages
        var configuration = hostConfiguration(cluster, group: "host", topics: ["bench": settings])
        configuration.crashJournal = crashJournal
        let host = SluiceHost(configuration: configuration, logger: logger)
        let counter = RateCounter()
        switch handler {
        case .message: host.register("bench", CountingHandler(counter: counter))
        case .batch: host.register("bench", batchHandler: CountingBatchHandler(counter: counter))
        case .crashPartitionZero: host.register("bench", CrashingHandler(counter: counter))
        }
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + .seconds(180)
        while counter.count < target, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let cpu = counter.cpuSinceFirst
        host.shutdown()
        try await running.value
        return (counter.count, counter.seconds, cpu)
    }

    /// Flag reaction through the flag file: (flag off -> partition paused, flag on -> first message handled,
    /// flag on seen by the host (its flag pause reason gone) -> first message handled).
    func flagReaction(_ cluster: String, logger: Logger) async throws -> ([Double], [Double], [Double]) {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("bench-flags-\(UUID()).yaml").path
        try "{}".write(toFile: file, atomically: true, encoding: .utf8)
        var configuration = hostConfiguration(cluster, group: "flags", topics: ["flagbench": TopicConfiguration()])
        configuration.flags.file = file
        configuration.flags.pollInterval = .seconds(1)
        let host = SluiceHost(configuration: configuration, logger: logger)
        let seen = SeenBox()
        host.register("flagbench", SeenHandler(seen: seen))
        let running = Task { try await host.run() }
        let producer = try KafkaProducer(configuration: .init(bootstrapServers: cluster), logger: logger)
        while host.shards.first?.state != .running { try await Task.sleep(for: .milliseconds(10)) }
        var off: [Double] = []
        var on: [Double] = []
        var onApplied: [Double] = []
        for _ in 0..<flagRuns {
            // Change the flag at a random point of the poll period, as an operator would.
            try await Task.sleep(for: .milliseconds(Int.random(in: 0..<1000)))
            try "flagbench: off\n".write(toFile: file, atomically: true, encoding: .utf8)
            let offAt = ContinuousClock.now
            while !(host.shards.first?.pauseReasons.contains(.flag) ?? false) { try await Task.sleep(for: .milliseconds(1)) }
            off.append((ContinuousClock.now - offAt).seconds)
            while host.shards.first?.state != .off { try await Task.sleep(for: .milliseconds(5)) }
            _ = try await producer.send(ProducerRecord(topic: "flagbench", value: Array(repeating: 120, count: 100)))
            seen.reset()
            try await Task.sleep(for: .milliseconds(Int.random(in: 0..<1000)))
            try "{}\n".write(toFile: file, atomically: true, encoding: .utf8)
            let onAt = ContinuousClock.now
            var appliedAt: ContinuousClock.Instant?
            while !seen.value {
                if appliedAt == nil, !(host.shards.first?.pauseReasons.contains(.flag) ?? true) { appliedAt = .now }
                try await Task.sleep(for: .milliseconds(1))
            }
            let handledAt = ContinuousClock.now
            on.append((handledAt - onAt).seconds)
            onApplied.append((handledAt - (appliedAt ?? handledAt)).seconds)
        }
        await producer.close()
        host.shutdown()
        try await running.value
        return (off, on, onApplied)
    }

    /// A handler slower than the topic (it spins 200 µs a message) on the one partition of its host: the
    /// partition's buffer fills, flow control pauses it and resumes it once half is handled; whether the
    /// handler then waits for messages is what this shows. Returns (messages a second, handler busy share).
    func slowHandler(_ cluster: String, logger: Logger) async throws -> (rate: Double, busy: Double) {
        let count = 20_000
        let producer = try KafkaProducer(configuration: .init(bootstrapServers: cluster), logger: logger)
        await producer.prepare(topics: ["slowbench"])
        let tally = PartitionTally()
        for _ in 0..<count {
            let record = ProducerRecord(topic: "slowbench", partition: 0, value: Array(repeating: 120, count: 100))
            while try !tally.enqueue(record, on: producer) { try await Task.sleep(for: .milliseconds(1)) }
        }
        while tally.delivered < count { try await Task.sleep(for: .milliseconds(20)) }
        await producer.close()
        let configuration = hostConfiguration(cluster, group: "slow", topics: ["slowbench": TopicConfiguration()])
        let host = SluiceHost(configuration: configuration, logger: logger)
        let counter = RateCounter()
        host.register("slowbench", SpinningHandler(counter: counter, spin: .microseconds(200)))
        let running = Task { try await host.run() }
        let deadline = ContinuousClock.now + .seconds(120)
        while counter.count < count, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        host.shutdown()
        try await running.value
        guard counter.count >= count else { throw ValidationError("g: \(counter.count) of \(count) messages handled in 120 s") }
        let rate = Double(counter.count) / counter.seconds
        return (rate, rate * 200e-6)
    }

    func printSlowHandler(_ result: (rate: Double, busy: Double)) {
        print(
            "g slow handler (200 µs a message, one partition, 20000 messages): \(Int(result.rate)) msg/s, "
                + "the handler busy \(Int(result.busy * 100)) % of the time (5000 msg/s at 100 %)")
    }

    func printFlagReaction(_ reaction: (off: [Double], on: [Double], onApplied: [Double])) {
        print("f flag reaction (file source, poll interval 1 s, \(flagRuns) changes):")
        print("  flag off -> partition paused:        median \(ms(median(reaction.off.sorted()))) ms, max \(ms(reaction.off.max()!)) ms")
        print("  flag on  -> first message handled:   median \(ms(median(reaction.on.sorted()))) ms, max \(ms(reaction.on.max()!)) ms")
        print(
            "  flag on applied -> first message:    median \(ms(median(reaction.onApplied.sorted()))) ms, max \(ms(reaction.onApplied.max()!)) ms"
                + " (the partition resumed, to its first message handled)")
    }

    func runScale(partitions total: Int, logger: Logger) async throws {
        let perTopic = total / 4
        let topics = (0..<4).map { "scale-\($0)" }
        let broker = try ChildBroker(topics: topics.map { "\($0):\(perTopic)" })
        defer { broker.stop() }
        let cluster = broker.bootstrap
        let producer = try KafkaProducer(configuration: .init(bootstrapServers: cluster), logger: logger)
        let tally = PartitionTally()
        for topic in topics {
            for partition in 0..<perTopic {
                for _ in 0..<10 {
                    let record = ProducerRecord(topic: topic, partition: Int32(partition), value: Array(repeating: 120, count: 100))
                    while try !tally.enqueue(record, on: producer) { try await Task.sleep(for: .milliseconds(1)) }
                }
            }
        }
        let produced = perTopic * 4 * 10
        while tally.delivered < produced { try await Task.sleep(for: .milliseconds(20)) }
        await producer.close()
        let before = residentMegabytes()
        resetPeakResident()
        var configuration = hostConfiguration(cluster, group: "scale", topics: Dictionary(uniqueKeysWithValues: topics.map { ($0, TopicConfiguration()) }))
        // The admin API and Prometheus metrics as a service runs them: how long /metrics and /v1/shards take
        // with this many shards.
        let registry = Self.metrics.registry
        Self.metrics.setPrometheus(true)
        configuration.admin.enabled = true
        configuration.admin.listen = "127.0.0.1:0"
        configuration.admin.stateFile = nil
        configuration.perPartitionMetrics = perPartitionMetrics
        let host = SluiceHost(configuration: configuration, logger: logger)
        let admin = try AdminServer(host: host, registry: registry, logger: logger)
        let serving = Task { try await admin.run() }
        let counter = RateCounter()
        for topic in topics { host.register(topic, CountingHandler(counter: counter)) }
        let started = ContinuousClock.now
        let running = Task { try await host.run() }
        var firstShard: ContinuousClock.Instant?
        while true {
            let shards = host.shards
            if firstShard == nil, !shards.isEmpty { firstShard = .now }
            if shards.count == perTopic * 4, shards.allSatisfy({ $0.state == .running }) { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        let allRunning = ContinuousClock.now
        while counter.count < produced { try await Task.sleep(for: .milliseconds(10)) }
        let handled = ContinuousClock.now
        let steadyMegabytes = residentMegabytes()
        // After a tick, so every gauge is there.
        try await Task.sleep(for: .seconds(1.5))
        var answers: [(path: String, milliseconds: [Double], bytes: Int)] = []
        if let port = admin.port {
            for path in ["/metrics", "/v1/shards"] {
                var times: [Double] = []
                var bytes = 0
                for _ in 0..<5 {
                    let asked = ContinuousClock.now
                    let (data, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)\(path)")!)
                    times.append((ContinuousClock.now - asked).seconds * 1000)
                    bytes = data.count
                }
                answers.append((path, times, bytes))
            }
        }
        host.shutdown()
        try await running.value
        let stopped = ContinuousClock.now
        serving.cancel()
        // The same messages through a plain librdkafka loop subscribed to the same topics: what librdkafka
        // itself reaches with this many partitions on this broker.
        let rawConfiguration = consumerConfiguration(cluster, group: "scale-raw-\(UUID())")
        let raw = try await onThread {
            try RawConsumeLoop.run(configuration: rawConfiguration, topics: topics, count: produced, timeout: .seconds(300))
        }
        print("scale: \(perTopic * 4) partitions over 4 topics on one host, \(produced) messages")
        print("  subscribe -> all shards running:    \(ms((allRunning - started).seconds)) ms (first shard after \(ms(((firstShard ?? allRunning) - started).seconds)) ms; the embedded coordinator waits 3 s for the first join)")
        print("  first shard -> all shards running:  \(ms((allRunning - (firstShard ?? allRunning)).seconds)) ms")
        print("  all running -> every message handled: \(ms((handled - allRunning).seconds)) ms")
        print("  shutdown (drain, commit, leave):    \(ms((stopped - handled).seconds)) ms")
        print("  RSS: before the host \(before) MB, with \(perTopic * 4) shards running \(steadyMegabytes) MB, peak \(peakResidentMegabytes()) MB")
        // Both from the first message to the last: the time before the first is librdkafka fetching 10,000
        // committed offsets, which the raw loop's figure leaves out too.
        let hostRate = Double(counter.count) / counter.seconds
        let rawRate = Double(raw.messages) / max(raw.elapsed.seconds, 0.001)
        print(
            "  rate, first message to last: host \(Int(hostRate)) msg/s (\(Int(Double(produced) / (handled - allRunning).seconds)) from all running); "
                + "raw librdkafka loop \(Int(rawRate)) msg/s (\(raw.messages) messages); host/raw \(String(format: "%.2f", hostRate / rawRate))")
        for answer in answers {
            print("  GET \(answer.path) (per-partition metrics \(perPartitionMetrics ? "on" : "off")): median \(Int(median(answer.milliseconds.sorted()))) ms, max \(Int(answer.milliseconds.max() ?? 0)) ms, \(answer.bytes / 1024) KiB")
        }
    }

    // MARK: Latency

    /// Latency at a steady rate: a child producer (`sluice produce --rate`) stamps each message when it
    /// produces it (the record timestamp); the consumer notes, per message, the time from that stamp to when
    /// its handler starts (raw librdkafka: when the poll returns it). One fresh topic per case, the consumer
    /// joined before the producer starts. Timestamps are whole milliseconds: figures are within 1 ms.
    func runLatency(rate requested: Int, logger: Logger) async throws {
        let topics = ["latency-raw", "latency-partition", "latency-key", "latency-max"]
        let broker = try ChildBroker(topics: topics.map { "\($0):8" })
        defer { broker.stop() }
        let cluster = broker.bootstrap
        var rate = requested
        if requested == 0 {
            let highest = try await highestRate(cluster)
            rate = max(1, highest / 2)
            print("highest rate carried end to end (the producer flat out, a raw librdkafka loop consuming, first message to last): \(highest) msg/s; measuring at half: \(rate) msg/s")
        }
        let count = rate * latencySeconds
        var rows: [(name: String, held: Int, values: [Double])] = []
        // Raw librdkafka: the poll loop on a thread of its own, the producer started once it has joined.
        let rawRun = try await startRawLoop(cluster, topic: "latency-raw", count: count, timeout: .seconds(Int64(latencySeconds) + 60), latencies: true)
        let rawHeld = try produceSteadily(cluster, topic: "latency-raw", rate: rate, count: count)
        rows.append(("raw librdkafka poll loop", rawHeld, try await rawRun.value.latencies))
        for (topic, name, ordering) in [("latency-partition", "host, ordering partition", TopicConfiguration.Ordering.partition), ("latency-key", "host, ordering key x8", .key)] {
            var settings = TopicConfiguration()
            settings.ordering = ordering
            settings.processors = ordering == .key ? 8 : 1
            let configuration = hostConfiguration(cluster, group: "latency", topics: [topic: settings])
            let host = SluiceHost(configuration: configuration, logger: logger)
            let recorder = LatencyRecorder(capacity: count)
            host.register(topic, LatencyHandler(recorder: recorder))
            let running = Task { try await host.run() }
            let deadline = ContinuousClock.now + .seconds(60)
            while host.shards.filter({ $0.state == .running }).count < 8, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            // A shard runs once assigned; librdkafka fetches its committed offset and starts fetching
            // after that (about 100 ms here). The raw loop had seconds to get there; so does the host.
            try await Task.sleep(for: .seconds(2))
            let held = try produceSteadily(cluster, topic: topic, rate: rate, count: count)
            let done = ContinuousClock.now + .seconds(60)
            while recorder.count < count, ContinuousClock.now < done { try await Task.sleep(for: .milliseconds(20)) }
            host.shutdown()
            try await running.value
            rows.append((name, held, recorder.values))
        }
        print("latency from produce to handler start, \(rate) msg/s for \(latencySeconds) s over 8 partitions (ms, timestamps in whole ms):")
        print("case                             messages  producer held msg/s       p50       p99     p99.9       max")
        for (name, held, values) in rows {
            let sorted = values.sorted()
            func percentile(_ p: Double) -> String {
                guard !sorted.isEmpty else { return "-" }
                return String(format: "%.1f", sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))])
            }
            print(
                name.padding(toLength: 30, withPad: " ", startingAt: 0) + pad(sorted.count, width: 11) + pad(held, width: 21)
                    + [percentile(0.5), percentile(0.99), percentile(0.999), sorted.last.map { String(format: "%.1f", $0) } ?? "-"]
                    .map { String(repeating: " ", count: max(0, 10 - $0.count)) + $0 }.joined())
        }
    }

    /// The highest rate this machine carries from a producer to a consumer: `sluice produce` flat out (no
    /// `--rate`) in a child process while a raw librdkafka loop consumes, the loop's messages over its first
    /// to last. The producer, the broker and the consumer share the machine, as in the latency runs.
    func highestRate(_ cluster: String) async throws -> Int {
        let count = 1_000_000
        let consuming = try await startRawLoop(cluster, topic: "latency-max", count: count, timeout: .seconds(120))
        try produceSteadily(cluster, topic: "latency-max", rate: nil, count: count)
        let result = try await consuming.value
        guard result.messages == count, result.elapsed > .zero else {
            throw ValidationError("the raw loop consumed \(result.messages) of \(count) messages while measuring the highest rate")
        }
        return Int(Double(result.messages) / result.elapsed.seconds)
    }

    /// A raw librdkafka loop on a thread of its own, consuming `count` messages of `topic`, once it has had
    /// the time to join its group (the raw loop has no assignment signal).
    func startRawLoop(
        _ cluster: String, topic: String, count: Int, timeout: Duration, latencies: Bool = false
    ) async throws -> Task<RawConsumeLoop.Result, any Error> {
        let configuration = consumerConfiguration(cluster, group: "\(topic)-\(UUID())")
        let run = Task {
            try await onThread { try RawConsumeLoop.run(configuration: configuration, topic: topic, count: count, timeout: timeout, latencies: latencies) }
        }
        try await Task.sleep(for: .seconds(6))
        return run
    }

    /// Runs `sluice produce --rate` (without a rate: as fast as it can) in a child process until it produced
    /// `count` messages; returns the rate it held (messages over its whole run, start-up included).
    @discardableResult
    func produceSteadily(_ cluster: String, topic: String, rate: Int?, count: Int) throws -> Int {
        let started = ContinuousClock.now
        let process = try startProducer(cluster, topic: topic, rate: rate, count: count)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw ValidationError("the steady producer failed (sluice produce exited \(process.terminationStatus))") }
        return Int(Double(count) / (ContinuousClock.now - started).seconds)
    }

    // MARK: Helpers

    /// Starts `sluice produce --rate` (100-byte messages over 1,000 keys; without a rate, as fast as it can) in
    /// a child process.
    func startProducer(_ cluster: String, topic: String, rate: Int?, count: Int) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = ["produce", "--bootstrap", cluster, "--topic", topic, "--count", "\(count)", "--keys", "1000", "--size", "100"]
            + (rate.map { ["--rate", "\($0)"] } ?? [])
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Preloads the topic with `sluice produce` (this executable) in a child process.
    func preload(bootstrap: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = [
            "produce", "--bootstrap", bootstrap, "--topic", "bench", "--count", "\(messages)", "--keys", "10000", "--size", "\(messageBytes)",
        ]
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw ValidationError("preloading failed (sluice produce exited \(process.terminationStatus))") }
    }

    /// Messages per partition of the benchmark topic, from its watermarks.
    func partitionCounts(bootstrap: String, logger: Logger) async throws -> [Int32: Int] {
        let consumer = try KafkaConsumer(configuration: consumerConfiguration(bootstrap, group: "counts"), logger: logger)
        var counts: [Int32: Int] = [:]
        for partition in 0..<Int32(partitions) {
            let watermarks = try await consumer.queryWatermarks(for: TopicPartition("bench", partition))
            counts[partition] = Int(watermarks.high - watermarks.low)
        }
        await consumer.close()
        return counts
    }

    /// A host of the bench: a fresh group and state directory, a 6 s session, no admin API, the bench's
    /// memory budget.
    func hostConfiguration(_ cluster: String, group: String, topics: [String: TopicConfiguration]) -> SluiceConfiguration {
        var kafka = SluiceConfiguration.Kafka(bootstrap: cluster, group: "\(group)-\(UUID())")
        kafka.sessionTimeout = .seconds(6)
        var configuration = SluiceConfiguration(kafka: kafka, topics: topics)
        configuration.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)").path
        configuration.admin.enabled = false
        configuration.memoryBudget = memoryBudget
        for entry in consumerProperty {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            configuration.kafka.properties[parts[0]] = parts[1]
        }
        return configuration
    }

    func consumerConfiguration(_ cluster: String, group: String) -> KafkaConsumerConfiguration {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        return configuration
    }

    func note(_ text: String) { FileHandle.standardError.write(Data("bench: \(text)\n".utf8)) }
    func pad(_ value: Int, width: Int = 14) -> String { String(repeating: " ", count: max(0, width - String(value).count)) + String(value) }
    func median(_ sorted: [Double]) -> Double { sorted.isEmpty ? 0 : sorted[sorted.count / 2] }
    func ms(_ seconds: Double) -> Int { Int((seconds * 1000).rounded()) }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// Runs blocking work on a Dispatch thread.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
    }
}

func peakResidentMegabytes() -> Int { statusMegabytes("VmHWM:") }
func residentMegabytes() -> Int { statusMegabytes("VmRSS:") }

#if os(Linux)
/// glibc's `malloc_trim` (not exported by Swift's Glibc module).
@_silgen_name("malloc_trim") private func glibcMallocTrim(_ pad: Int) -> Int32
#endif

/// Returns memory earlier cases freed to the system (glibc keeps freed memory in its per-thread arenas,
/// which would otherwise count toward the next case's peak), then resets the peak RSS the kernel reports
/// (Linux: writing 5 to clear_refs).
func resetPeakResident() {
    #if os(Linux)
    _ = glibcMallocTrim(0)
    #endif
    try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
}

private func statusMegabytes(_ field: String) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
    for line in status.split(separator: "\n") where line.hasPrefix(field) {
        let kilobytes = Int(line.split(separator: " ").dropFirst().first(where: { !$0.isEmpty }) ?? "") ?? 0
        return kilobytes / 1024
    }
    return -1
}

/// Counts handled messages and the time from the first to the latest.
final class RateCounter: Sendable {
    private let state = Mutex<(count: Int, first: ContinuousClock.Instant?, last: ContinuousClock.Instant?, cpuAtFirst: Double)>((0, nil, nil, 0))
    func add(_ count: Int) {
        let now = ContinuousClock.now
        state.withLock { state in
            if state.first == nil {
                state.first = now
                state.cpuAtFirst = RawConsumeLoop.processCPUSeconds()
            }
            state.count += count
            state.last = now
        }
    }
    var count: Int { state.withLock { $0.count } }
    /// The process's CPU seconds since the first message (0 before it).
    var cpuSinceFirst: Double {
        let (first, cpuAtFirst) = state.withLock { ($0.first, $0.cpuAtFirst) }
        return first == nil ? 0 : RawConsumeLoop.processCPUSeconds() - cpuAtFirst
    }
    var seconds: Double {
        state.withLock { state in
            guard let first = state.first, let last = state.last, last > first else { return 1 }
            return (last - first).seconds
        }
    }
}

/// Latencies noted by handlers, in milliseconds.
final class LatencyRecorder: Sendable {
    private let state: Mutex<[Double]>
    init(capacity: Int) {
        var values: [Double] = []
        values.reserveCapacity(capacity)
        state = Mutex(values)
    }
    func add(_ value: Double) { state.withLock { $0.append(value) } }
    var count: Int { state.withLock { $0.count } }
    var values: [Double] { state.withLock { $0 } }
}

/// Notes, when its call starts, how long ago the message was produced.
struct LatencyHandler: MessageHandler {
    let recorder: LatencyRecorder
    func handle(_ message: Message, context: ShardContext) async throws {
        guard let stamp = message.timestampMilliseconds else { return }
        recorder.add(RawConsumeLoop.nowMilliseconds() - Double(stamp))
    }
}

struct CountingHandler: MessageHandler {
    let counter: RateCounter
    func handle(_ message: Message, context: ShardContext) async throws { counter.add(1) }
}

struct CountingBatchHandler: BatchHandler {
    let counter: RateCounter
    func handle(_ batch: [Message], context: ShardContext) async throws { counter.add(batch.count) }
}

struct CrashingHandler: MessageHandler {
    struct Crash: Error {}
    let counter: RateCounter
    func handle(_ message: Message, context: ShardContext) async throws {
        if message.partition == 0 { throw Crash() }
        counter.add(1)
    }
}

final class SeenBox: Sendable {
    private let seen = Mutex(false)
    func reset() { seen.withLock { $0 = false } }
    func mark() { seen.withLock { $0 = true } }
    var value: Bool { seen.withLock { $0 } }
}

/// Spins for `spin` per message (a handler slower than its topic), then counts it.
struct SpinningHandler: MessageHandler {
    let counter: RateCounter
    let spin: Duration
    func handle(_ message: Message, context: ShardContext) async throws {
        let until = ContinuousClock.now + spin
        while ContinuousClock.now < until {}
        counter.add(1)
    }
}

struct SeenHandler: MessageHandler {
    let seen: SeenBox
    func handle(_ message: Message, context: ShardContext) async throws { seen.mark() }
}

/// Counts deliveries per partition while preloading.
final class PartitionTally: Sendable {
    private let state = Mutex<(delivered: Int, perPartition: [Int32: Int], failure: KafkaError?)>((0, [:], nil))
    func enqueue(_ record: ProducerRecord, on producer: KafkaProducer) throws -> Bool {
        do {
            try producer.enqueue(record) { result in
                self.state.withLock { state in
                    switch result {
                    case .success(let report):
                        state.delivered += 1
                        state.perPartition[report.topicPartition.partition, default: 0] += 1
                    case .failure(let error):
                        state.failure = error
                    }
                }
            }
            return true
        } catch {
            if error.code == .queueFull { return false }
            throw error
        }
    }
    var delivered: Int { state.withLock { $0.delivered } }
    var perPartition: [Int32: Int] { state.withLock { $0.perPartition } }
    var failure: KafkaError? { state.withLock { $0.failure } }
}

/// `sluice dev-broker` in a child process.
final class ChildBroker {
    let process = Process()
    let bootstrap: String

    init(topics: [String]) throws {
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = ["dev-broker"] + topics.flatMap { ["--topic", $0] }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        var bytes: [UInt8] = []
        while !bytes.contains(10) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            bytes += chunk
        }
        let line = String(decoding: bytes.prefix { $0 != 10 }, as: UTF8.self)
        guard line.hasPrefix("bootstrap=") else { throw ValidationError("the dev broker did not start: '\(line)'") }
        bootstrap = String(line.dropFirst("bootstrap=".count))
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}
