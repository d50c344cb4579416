import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

/// `output: exactlyOnce` with real processes on tansu, which commits the offsets a transaction carries and hides
/// open transactions from `read_committed` readers (librdkafka's mock does neither). What tansu cannot show: it
/// hands aborted records to `read_committed` readers as well (its aborted-transactions list is always empty), so
/// output written by a transaction a kill aborted is read here too; on Kafka it is not (the README says how to
/// check that on a cluster).
@Suite("Exactly-once output with processes", .serialized, .timeLimit(.minutes(6)))
struct ExactlyOnceProcessTests {
    static let partitions = 4

    /// OrderService writing every order to `orders.out` in its shard's transaction.
    func startService(
        _ cluster: any TestKafkaCluster, group: String, state: String, commitInterval: String = "200ms"
    ) throws -> SluiceProcess {
        try OrderServiceTests.startService(
            cluster, group: group,
            environment: ["ORDER_SERVICE_OUTPUT": "orders.out", "SLUICE_HOST_STATE_DIRECTORY": state],
            editConfiguration: {
                $0.replacingOccurrences(of: "    processors: 8\n", with: "    processors: 8\n    output: exactlyOnce\n")
                    .replacingOccurrences(of: "commitInterval: 1s", with: "commitInterval: \(commitInterval)")
            }
        ).0
    }

    /// A tansu cluster with OrderService's topics and its output topic.
    static func startCluster() async throws -> any TestKafkaCluster {
        try await TestClusters.start(
            topics: ["orders": partitions, "orders.out": 2, "orders.dlq": 1, "payments": 2])
    }

    /// What an independent `read_committed` reader (confluent-kafka) reads of `orders.out`: the input positions its
    /// records name, once per record.
    static func readCommitted(_ cluster: any TestKafkaCluster, until: Int, idle: Double) throws -> [String] {
        let pythonPath = try Self.run("scripts/ensure-confluent-kafka.sh", []).trimmingCharacters(
            in: .whitespacesAndNewlines)
        let output = try Self.run(
            "/usr/bin/env",
            [
                "python3", "scripts/read-committed.py", cluster.bootstrapServers, "orders.out", "\(until)", "\(idle)",
                "120",
            ],
            environment: ["PYTHONPATH": pythonPath])
        return output.split(separator: "\n").map(String.init)
    }

    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failed(
                description: "\(executable) \(arguments.joined(separator: " ")) exited \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self)
    }

    final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }

    struct Failed: Error, CustomStringConvertible {
        let description: String
    }

    /// Reads `orders.out` as an independent `read_committed` reader and records an issue for each input of `produced`
    /// (orders per partition) without output; returns the records read and how many of them repeat an input.
    static func expectEveryInputHasOutput(
        _ cluster: any TestKafkaCluster, _ produced: [Int32: Int], sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> (read: Int, repeated: Int) {
        let lines = try readCommitted(cluster, until: produced.values.reduce(0, +), idle: 3)
        let distinct = Set(lines)
        let missing = produced.sorted { $0.key < $1.key }.flatMap { partition, count in
            (0..<count).map { "\(partition) \($0)" }.filter { !distinct.contains($0) }
        }
        #expect(
            missing.isEmpty, "inputs without committed output: \(missing.count), first \(missing.prefix(5))",
            sourceLocation: sourceLocation)
        return (lines.count, lines.count - distinct.count)
    }

    /// Produces `chunks` chunks of 100 orders as `sluice produce` writes them (200 customers), one chunk every 100
    /// ms: steady traffic. Returns how many went to each partition.
    static func produceOrders(_ cluster: any TestKafkaCluster, chunks: Int) async throws -> [Int32: Int] {
        var configuration = KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
        configuration.properties = cluster.clientProperties
        let producer = try KafkaProducer(configuration: configuration, logger: Logger(label: "test-producer"))
        var sequences = [Int](repeating: 0, count: 200)
        var counts: [Int32: Int] = [:]
        for chunk in 0..<chunks {
            let records = (chunk * 100..<(chunk + 1) * 100).map { n in
                let key = n % sequences.count
                defer { sequences[key] += 1 }
                return ProducerRecord(
                    topic: "orders", key: Array("customer-\(key)".utf8),
                    value: Array("{\"key\":\"customer-\(key)\",\"seq\":\(sequences[key]),\"n\":\(n)}".utf8))
            }
            for outcome in await producer.sendAll(records) {
                counts[try outcome.get().topicPartition.partition, default: 0] += 1
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        await producer.close()
        return counts
    }

    @Test(
        "kill -9 ten times in exactly-once traffic: offsets only from committed transactions, to the end; every input's output committed; nothing visible before its commit",
        .enabled(if: TestClusters.isTansu, "librdkafka's mock stores no offset a transaction commits"))
    func killNineInExactlyOnceTraffic() async throws {
        let cluster = try await Self.startCluster()
        // About two minutes of traffic (1,200 chunks of 100 orders), the kills within it (a restart takes a session
        // timeout or so: the dead member holds its partitions until then).
        let trafficEnded = Flag()
        let producing = Task {
            defer { trafficEnded.value.store(true, ordering: .releasing) }
            return try await Self.produceOrders(cluster, chunks: 1_200)
        }
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)")
            .path
        func committed() async throws -> [Int32: Int64] {
            try await cluster.committedOffsets(group: group, topic: "orders", partitions: Self.partitions)
        }
        var service = try startService(cluster, group: group, state: state)
        var kills = 0
        var checkedVisibility = false
        defer { producing.cancel() }
        var last: [Int32: Int64] = [:]
        while kills < 10, !trafficEnded.value.load(ordering: .acquiring) {
            // In the middle of the traffic: once this process committed a transaction past the last one's.
            let progressed = await eventually(timeout: .seconds(90), poll: .milliseconds(100)) {
                let now = (try? await committed()) ?? [:]
                return now.contains { $0.value > (last[$0.key] ?? 0) }
            }
            #expect(progressed, "the restarted service commits (kill \(kills)): \(service.errors.text.suffix(4_000))")
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...400)))
            if !checkedVisibility {
                // Before any kill (so before any abort, whose records tansu would show): what a read_committed
                // reader sees is of offsets committed by then.
                let visible = try Self.readCommitted(cluster, until: 0, idle: 1)
                let after = try await committed()
                let early = visible.filter { line in
                    let parts = line.split(separator: " ").compactMap { Int64($0) }
                    return parts.count != 2 || parts[1] >= after[Int32(parts[0])] ?? 0
                }
                #expect(early.isEmpty, "read before its commit: \(early.prefix(5)) (\(visible.count) read)")
                checkedVisibility = true
            }
            last = try await committed()
            kill(service.process.processIdentifier, SIGKILL)
            _ = await service.exit()
            kills += 1
            service = try startService(cluster, group: group, state: state)
        }
        #expect(kills == 10, "ten kills in the traffic")
        let produced = try await producing.value
        let total = produced.values.reduce(0, +)
        let expected = produced.mapValues { Int64($0) }
        let done = await eventually(timeout: .seconds(180), poll: .milliseconds(250)) {
            (try? await committed()) == expected
        }
        let final = (try? await committed()) ?? [:]
        let said = service.errors.text.split(separator: "\n").filter {
            $0.contains("transaction") || $0.contains("crashed") || $0.contains("tripped")
        }
        #expect(done, "committed to the end: \(final) of \(expected); \(said.suffix(30).joined(separator: "\n"))")
        service.process.terminate()
        let status = await service.exit()
        #expect(status == 0, "exit \(String(describing: status)): \(service.errors.text.suffix(3_000))")

        let (read, repeated) = try Self.expectEveryInputHasOutput(cluster, produced)
        print(
            "exactly once under kill -9: \(kills) kills, \(total) inputs, \(read) output records read (tansu shows aborted ones too: \(repeated) repeated)"
        )
    }

    @Test(
        "a zombie (paused past its session, then resumed) is fenced: its transactions fail and its shards exit; every input's output once",
        .enabled(if: TestClusters.isTansu, "librdkafka's mock fences no producer"))
    func zombieIsFenced() async throws {
        let cluster = try await Self.startCluster()
        let producing = Task { try await Self.produceOrders(cluster, chunks: 400) }
        defer { producing.cancel() }
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        func committed() async throws -> [Int32: Int64] {
            try await cluster.committedOffsets(group: group, topic: "orders", partitions: Self.partitions)
        }
        /// Waits until every partition's committed offset passed what it was.
        func everyPartitionAdvances(_ what: String) async throws {
            let before = try await committed()
            try await waitUntil(what, timeout: .seconds(90), poll: .milliseconds(200)) {
                let now = try await committed()
                return (0..<Int32(Self.partitions)).allSatisfy { (now[$0] ?? 0) > (before[$0] ?? 0) }
            }
        }
        let other = try startService(cluster, group: group, state: NSTemporaryDirectory() + "sluice-\(UUID())")
        try await everyPartitionAdvances("the first service commits on every partition")
        // The zombie commits only when its shards end: whatever it handled is in its open transactions when it is
        // paused, so it has something to commit when it resumes.
        let zombie = try startService(
            cluster, group: group, state: NSTemporaryDirectory() + "sluice-\(UUID())",
            commitInterval: "1h")
        try await waitUntil("the zombie handles orders", timeout: .seconds(90)) {
            zombie.errors.text.contains("kafka.topic=orders sluice.attempt=0 [Sluice] shard started")
        }
        try await Task.sleep(for: .seconds(3))
        kill(zombie.process.processIdentifier, SIGSTOP)
        // Past its 6 s session: the other service owns every partition and its producers fence the zombie's.
        try await everyPartitionAdvances("the other service commits on every partition while the zombie sleeps")
        kill(zombie.process.processIdentifier, SIGCONT)
        let fenced = await zombie.errors.waitFor("fenced by a newer instance", timeout: .seconds(60))
        #expect(fenced, "the zombie's transaction is refused: \(zombie.errors.text.suffix(3_000))")
        let exited = await zombie.errors.waitFor("transaction failed; aborting it", timeout: .seconds(60))
        #expect(exited, "and its shard exits")
        // Its part is played: it leaves (a clean stop), and the other service finishes the traffic.
        zombie.process.terminate()
        let zombieStatus = await zombie.exit()
        #expect(zombieStatus == 0, "exit \(String(describing: zombieStatus)): \(zombie.errors.text.suffix(2_000))")

        let produced = try await producing.value
        let expected = produced.mapValues { Int64($0) }
        let done = await eventually(timeout: .seconds(120), poll: .milliseconds(250)) {
            (try? await committed()) == expected
        }
        let final = (try? await committed()) ?? [:]
        #expect(done, "committed to the end: \(final) of \(expected)")
        other.process.terminate()
        let status = await other.exit()
        #expect(status == 0, "exit \(String(describing: status)): \(other.errors.text.suffix(2_000))")
        let total = produced.values.reduce(0, +)
        let (read, repeated) = try Self.expectEveryInputHasOutput(cluster, produced)
        let zombieSaid = zombie.errors.text.split(separator: "\n").filter { $0.contains("fenced") }.prefix(2)
        print("the zombie said: \(zombieSaid.joined(separator: "\n"))")
        print(
            "zombie fenced: \(total) inputs, \(read) output records read (\(repeated) repeated: aborted ones, which tansu shows)"
        )
    }
}
