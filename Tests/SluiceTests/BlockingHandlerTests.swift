import Foundation
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

/// Handlers that hold their threads (a synchronous client, `sleep`, a CPU loop) or hang, on a machine with
/// few cores: the shards they are on crash on `handlerTimeout`, every other shard keeps being handled and
/// the host stays healthy.
@Suite("Handlers that block their threads", .timeLimit(.minutes(3)))
struct BlockingHandlerTests {
    static func configuration(_ cluster: any TestKafkaCluster) -> SluiceConfiguration {
        var topic = TopicConfiguration()
        topic.handlerTimeout = .seconds(2)
        // A short backoff, so a crashed shard comes back while the test still watches.
        topic.breaker = .backoff
        var configuration = HostFixture.configuration(
            cluster, group: HostFixture.uniqueGroup(), topics: ["orders": topic])
        configuration.blockedThreadAfter = .milliseconds(200)
        return configuration
    }

    /// Sends `perPartition` messages to each of `partitions` partitions; returns when all are acknowledged.
    static func produce(_ cluster: any TestKafkaCluster, partitions: Int32, perPartition: Int) async throws {
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)
        for index in 0..<perPartition {
            for partition in 0..<partitions {
                _ = try await producer.send(
                    ProducerRecord(topic: "orders", partition: partition, value: Array("\(partition)/\(index)".utf8)))
            }
        }
        await producer.close()
    }

    @Test(
        "two handlers that block their threads for a minute: their shards crash on handlerTimeout, the six others are handled, /healthz stays green"
    )
    func twoBlockingHandlers() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 8])
        try await Self.produce(cluster, partitions: 8, perPartition: 50)
        let host = SluiceHost(configuration: Self.configuration(cluster), logger: HostFixture.logger)
        let release = DispatchSemaphore(value: 0)
        let blockedOnce = Locked<Set<Int32>>([])
        let firstBlock = Locked<ContinuousClock.Instant?>(nil)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                // The first message of partitions 0 and 1 holds its thread, as a synchronous client would.
                if message.partition < 2, blockedOnce.withLock({ $0.insert(message.partition).inserted }) {
                    firstBlock.withLock { $0 = $0 ?? .now }
                    _ = release.wait(timeout: .now() + 60)
                }
                handled.append(message)
            })
        let running = Task { try await host.run() }
        defer {
            release.signal()
            release.signal()
            host.shutdown()
        }
        try await waitUntil("the six other partitions handled and both blocked shards crashed", timeout: .seconds(50)) {
            let others = Set(handled.all.value.filter { $0.partition >= 2 }.map { "\($0.partition)/\($0.offset)" })
            let crashed = host.shards.filter {
                $0.topicPartition.partition < 2 && ($0.lastError ?? "").contains("longer than")
            }
            return others.count == 6 * 50 && crashed.count == 2 && blockedOnce.value.count == 2
        }
        // A figure, not a bound: how long after the first block both shards were seen crashed.
        if let start = firstBlock.value {
            print(
                "blocking handlers: both shards crashed \(ContinuousClock.now - start) after the first block (handlerTimeout 2 s)"
            )
        }
        // Still inside the minute both handlers hold their threads.
        #expect(host.health().healthy, "\(host.health().reasons)")
        #expect(host.blockedHandlerThreads == 2)
        release.signal()
        release.signal()
        // Once the threads are back, the crashed shards restart and finish their partitions too.
        try await waitUntil("all 400 handled") {
            Set(handled.all.value.map { "\($0.partition)/\($0.offset)" }).count == 400
        }
        #expect(host.blockedHandlerThreads == 0)
        host.shutdown()
        try await running.value
    }

    @Test(
        "with every thread of Swift's cooperative pool blocked, a hung handler's shard still crashes on handlerTimeout and other partitions are handled"
    )
    func cooperativePoolBlocked() async throws {
        // Holding every cooperative thread would starve the other tests of this process: in a process of its own.
        if ProcessInfo.processInfo.environment[Self.aloneVariable] == "cooperativePoolBlocked" {
            try await poolBlockedAlone()
            return
        }
        let (status, output) = try await Self.runAlone("cooperativePoolBlocked")
        #expect(status == 0 && output.contains("Test run with 1 test"), "the test in its own process:\n\(output)")
    }

    static let aloneVariable = "SLUICE_TEST_ALONE"

    /// Runs one test of this test binary in a child process; returns its exit status and output.
    static func runAlone(_ test: String) async throws -> (Int32, String) {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-alone-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: output) }
        let handle = try FileHandle(forWritingTo: output)
        var environment = ProcessInfo.processInfo.environment
        environment[aloneVariable] = test
        // posix_spawn, not Foundation's Process (see ChildProcess).
        let process = try ChildProcess(
            executable: CommandLine.arguments[0], arguments: ["--testing-library", "swift-testing", "--filter", test],
            environment: environment, standardOutput: handle.fileDescriptor, standardError: handle.fileDescriptor)
        try handle.close()
        await process.waitForExit()
        let status = process.terminationReason == .exit ? process.terminationStatus : -1
        return (status, (try? String(contentsOf: output, encoding: .utf8)) ?? "")
    }

    func poolBlockedAlone() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 4])
        let host = SluiceHost(configuration: Self.configuration(cluster), logger: HostFixture.logger)
        let hang = Hang()
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                // Partition 0's first message hangs without ever returning, cancelled or not.
                if message.partition == 0, message.offset == 0 { await hang.wait() }
                handled.append(message)
            })
        let running = Task { try await host.run() }
        defer {
            hang.release()
            host.shutdown()
        }
        try await waitUntil("four shards running") { host.shards.filter { $0.state == .running }.count == 4 }
        let producer = try KafkaProducer(
            configuration: .init(bootstrapServers: cluster.bootstrapServers), logger: HostFixture.logger)

        // Hold every cooperative thread; a thread of the test's own watches the host meanwhile, produces, and
        // lets the pool go once it saw what it waits for (or gave up).
        let poolWidth = ProcessInfo.processInfo.activeProcessorCount
        let blockers = DispatchSemaphore(value: 0)
        let started = Locked(0)
        let observation = await withCheckedContinuation { (done: CheckedContinuation<Observation, Never>) in
            let watcher = Thread {
                var seen = Observation()
                let giveUp = Date().addingTimeInterval(60)
                while started.value < poolWidth, Date() < giveUp { usleep(10_000) }
                seen.poolBlocked = started.value == poolWidth
                for index in 0..<200 {
                    try? producer.enqueue(
                        ProducerRecord(topic: "orders", partition: Int32(index % 4), value: Array("\(index)".utf8))
                    ) { _ in }
                }
                while Date() < giveUp {
                    let shards = host.shards
                    seen.crashed = shards.contains {
                        $0.topicPartition.partition == 0 && ($0.lastError ?? "").contains("longer than")
                    }
                    seen.othersHandled =
                        Set(handled.all.value.filter { $0.partition != 0 }.map { "\($0.partition)/\($0.offset)" }).count
                        == 150
                    if seen.crashed && seen.othersHandled { break }
                    usleep(20_000)
                }
                seen.stillBlocked = started.value == poolWidth
                for _ in 0..<poolWidth { blockers.signal() }
                done.resume(returning: seen)
            }
            watcher.start()
            for _ in 0..<poolWidth {
                Task.detached {
                    started.withLock { $0 += 1 }
                    blockers.wait()
                }
            }
        }
        await producer.close()
        #expect(observation.poolBlocked, "every cooperative thread was held")
        #expect(observation.crashed, "partition 0's shard crashed on handlerTimeout while the pool was held")
        #expect(observation.othersHandled, "partitions 1-3 were handled while the pool was held")
        #expect(observation.stillBlocked)
        hang.release()
        host.shutdown()
        try await running.value
    }

    struct Observation: Sendable {
        var poolBlocked = false
        var crashed = false
        var othersHandled = false
        var stillBlocked = false
    }
}

/// A wait that ignores cancellation and ends only on ``release()``: a handler stuck on a dependency.
final class Hang: Sendable {
    private let state = Mutex<(released: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let released = state.withLock { state -> Bool in
                if !state.released { state.waiters.append(continuation) }
                return state.released
            }
            if released { continuation.resume() }
        }
    }

    func release() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.released = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Handler calls abandoned past `handlerTimeout` keep running (Swift cannot stop them): a restarted shard
/// must not hand their messages to a second call meanwhile, and they must not pile up without bound.
@Suite("Abandoned handler calls", .timeLimit(.minutes(2)))
struct AbandonedCallsTests {
    static func configuration(_ cluster: any TestKafkaCluster, abandonTimeout: Duration, maxAbandonedCalls: Int)
        -> SluiceConfiguration
    {
        var topic = TopicConfiguration()
        topic.handlerTimeout = .milliseconds(300)
        topic.abandonTimeout = abandonTimeout
        topic.maxAbandonedCalls = maxAbandonedCalls
        // Restarts at once and never trips on crashes: only the abandoned-call bound can trip it.
        topic.breaker = BreakerPolicy(
            restartBackoff: .init(initial: .milliseconds(50), maximum: .milliseconds(50), jitter: 0),
            trip: nil, cooldown: nil, healthyAfter: .seconds(60))
        return HostFixture.configuration(cluster, group: HostFixture.uniqueGroup(), topics: ["orders": topic])
    }

    @Test(
        "a restarted shard hands no message to a new call while the call it abandoned still runs; afterwards it goes on"
    )
    func noSecondCallWhileAbandonedRuns() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        try await BlockingHandlerTests.produce(cluster, partitions: 1, perPartition: 10)
        let host = SluiceHost(
            configuration: Self.configuration(cluster, abandonTimeout: .seconds(60), maxAbandonedCalls: 3),
            logger: HostFixture.logger)
        let hang = Hang()
        let calls = Locked<(perOffset: [Int64: Int], running: Int, peak: Int)>(([:], 0, 0))
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                let first = calls.withLock { calls -> Bool in
                    calls.perOffset[message.offset, default: 0] += 1
                    calls.running += 1
                    calls.peak = max(calls.peak, calls.running)
                    return calls.perOffset[message.offset] == 1
                }
                defer { calls.withLock { $0.running -= 1 } }
                // The first call for offset 0 hangs on a dependency, past handlerTimeout, cancelled or not.
                if message.offset == 0, first { await hang.wait() }
                handled.append(message)
            })
        let running = Task { try await host.run() }
        defer {
            hang.release()
            host.shutdown()
        }
        try await waitUntil("restarted with the hung call abandoned") {
            host.shards.first.map { $0.state == .running && $0.generation >= 2 && $0.abandonedCalls == 1 } ?? false
        }
        // A few turns of the supervisor later, the new pipeline has still not called the handler again.
        let ticks = host.ticks
        try await waitUntil("three ticks") { host.ticks >= ticks + 3 }
        #expect(calls.value.perOffset[0] == 1, "no second call for offset 0 while the first runs")
        #expect(handled.count == 0)
        hang.release()
        try await waitUntil("all ten handled") { handled.distinct == 10 }
        #expect(calls.value.peak == 1, "never two calls at once")
        try await waitUntil("no abandoned call left") { host.shards.first?.abandonedCalls == 0 }
        host.shutdown()
        try await running.value
    }

    @Test("past maxAbandonedCalls the shard trips, whatever its breaker policy, and the hung calls stop piling up")
    func boundTrips() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 1])
        try await BlockingHandlerTests.produce(cluster, partitions: 1, perPartition: 3)
        let host = SluiceHost(
            configuration: Self.configuration(cluster, abandonTimeout: .zero, maxAbandonedCalls: 2),
            logger: HostFixture.logger)
        let hang = Hang()
        let calls = Locked(0)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.offset == 0 {
                    calls.withLock { $0 += 1 }
                    await hang.wait()
                }
            })
        let running = Task { try await host.run() }
        defer {
            hang.release()
            host.shutdown()
        }
        try await waitUntil("tripped") {
            host.shards.first.map { if case .tripped = $0.state { true } else { false } } ?? false
        }
        let shard = try #require(host.shards.first)
        #expect(calls.value == 3, "two abandoned calls allowed, the third over the bound")
        #expect(shard.abandonedCalls == 3)
        #expect(
            shard.lastError?.contains("3 abandoned handler calls still running (maxAbandonedCalls 2)") == true,
            "\(shard.lastError ?? "")")
        hang.release()
        try await waitUntil("the abandoned calls ended") { host.shards.first?.abandonedCalls == 0 }
        host.shutdown()
        try await running.value
    }
}
