import ArgumentParser
import Foundation
import Logging
import SluiceKafka
import Synchronization

/// `sluice bench --fleet FLIPS`: three host processes in one group on the embedded cluster, a steady
/// producer, and flag flips through the CLI (`sluice flags set|unset --bootstrap --group`), measuring what
/// an operator sees during an incident.
extension BenchCommand {
    func runFleet(flips: Int, logger: Logger) async throws {
        let topic = "fleet"
        let partitions = 12
        let group = "fleet-\(UUID().uuidString.prefix(8))"
        let broker = try ChildBroker(topics: [
            "\(topic):\(partitions)", "__sluice-control-\(group):1", "__sluice-audit-\(group):1",
        ])
        defer { broker.stop() }
        let cluster = broker.bootstrap
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-fleet-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let hosts = try (0..<3).map { index in
            try FleetChild(
                arguments: [
                    "fleet-host", "--bootstrap", cluster, "--group", group, "--topic", topic, "--record",
                    directory.appendingPathComponent("host-\(index)").path,
                ])
        }
        defer { for host in hosts { host.stop() } }
        note("three hosts joining group \(group)")
        guard
            await waitUntil(
                seconds: 60, { hosts.allSatisfy { $0.owned > 0 } && hosts.map(\.owned).reduce(0, +) == partitions })
        else {
            throw ValidationError("the three hosts did not share the \(partitions) partitions: \(hosts.map(\.owned))")
        }
        // A steady producer for the whole run: flips happen under load, as in an incident.
        let rate = 2_000
        let producer = try startProducer(cluster, topic: topic, rate: rate, count: rate * 3_600)
        try await Task.sleep(for: .seconds(2))

        var toOff: [Double] = []
        var toPaused: [Double] = []
        var toApplied: [Double] = []
        var toFirst: [Double] = []
        var acknowledged: [Double] = []
        var fullAcks = 0
        for flip in 1...flips {
            let started = Int64(Date().timeIntervalSince1970 * 1000)
            let set = try cli([
                "flags", "set", topic, "off", "--bootstrap", cluster, "--group", group, "--reason",
                "bench flip \(flip)",
            ])
            if set.contains("3/3 hosts applied") { fullAcks += 1 }
            if let applied = appliedMilliseconds(set) { acknowledged.append(applied) }
            guard await waitUntil(seconds: 30, { hosts.allSatisfy { $0.offSince(started) != nil } }) else {
                throw ValidationError(
                    "flip \(flip): not every shard went off within 30 s: \(hosts.map { "\($0.off)/\($0.owned)" })")
            }
            toOff.append(Double(hosts.compactMap { $0.offSince(started) }.max()! - started))
            if hosts.allSatisfy({ $0.flagOff(after: started) != nil }) {
                toApplied.append(Double(hosts.compactMap { $0.flagOff(after: started) }.max()! - started))
            }
            toPaused.append(
                hosts.compactMap { $0.pausedSince(started) }.max().map { Double($0 - started) } ?? toOff.last!)
            try await Task.sleep(for: .milliseconds(500))
            let resumed = Int64(Date().timeIntervalSince1970 * 1000)
            let unset = try cli([
                "flags", "unset", topic, "--bootstrap", cluster, "--group", group, "--reason",
                "bench flip \(flip) over",
            ])
            if unset.contains("3/3 hosts applied") { fullAcks += 1 }
            guard await waitUntil(seconds: 30, { hosts.contains { $0.firstHandled(after: resumed) != nil } }) else {
                throw ValidationError("flip \(flip): nothing was handled within 30 s of the flag going back on")
            }
            toFirst.append(Double(hosts.compactMap { $0.firstHandled(after: resumed) }.min()! - resumed))
            try await Task.sleep(for: .milliseconds(500))
        }
        producer.terminate()
        producer.waitUntilExit()

        // Everything produced is handled: committed reaches the end of every partition.
        let ends = try await endOffsets(cluster, topic: topic, partitions: partitions, logger: logger)
        let settled = await waitUntil(seconds: 60) {
            (try? await self.committed(cluster, group: group, topic: topic, partitions: partitions, logger: logger))
                == ends
        }
        for host in hosts { host.stop() }
        var seen: [Int32: [Int64: Int]] = [:]
        for index in 0..<3 {
            let text =
                (try? String(contentsOf: directory.appendingPathComponent("host-\(index)"), encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ")
                guard words.count == 2, let partition = Int32(words[0]), let offset = Int64(words[1]) else { continue }
                seen[partition, default: [:]][offset, default: 0] += 1
            }
        }
        let produced = ends.values.reduce(0, +)
        let duplicates = seen.values.flatMap(\.values).reduce(0) { $0 + max(0, $1 - 1) }
        var lost = 0
        for (partition, end) in ends {
            let handled = seen[partition.partition] ?? [:]
            lost += (0..<end).filter { handled[$0] == nil }.count
        }
        func summary(_ values: [Double]) -> String {
            let sorted = values.sorted()
            return "median \(Int(median(sorted))) ms, max \(Int(sorted.last ?? 0)) ms"
        }
        print(
            "fleet: 3 host processes, \(partitions) partitions, \(rate) msg/s steady, \(flips) flips through `sluice flags set|unset --bootstrap`"
        )
        print("  flag off → every host's flags say off, from the CLI's start: \(summary(toApplied))")
        print("  flag off → every shard of the topic paused on every host, from the CLI's start: \(summary(toPaused))")
        print("  flag off → every shard of the topic off (paused, drained, committed) on every host: \(summary(toOff))")
        print("  flag on → first message handled, from the CLI's start: \(summary(toFirst))")
        print(
            "  the CLI's own figure (write → every host applied): \(summary(acknowledged)); \(fullAcks)/\(flips * 2) writes reported 3/3 hosts"
        )
        let slowest = toOff.enumerated().sorted { $0.element > $1.element }.prefix(3).map {
            "flip \($0.offset + 1): \(Int($0.element)) ms"
        }
        print("  slowest flips to off: \(slowest.joined(separator: ", "))")
        print(
            "  messages: \(produced) produced, \(lost) lost, \(duplicates) handled twice\(settled ? "" : " (committed offsets had not reached the end after 60 s)")"
        )
    }

    /// Runs this executable with `arguments`; returns its standard output.
    func cli(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = arguments
        let output = Pipe()
        let errors = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-cli-\(UUID().uuidString).err")
        _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errors) }
        process.standardOutput = output
        process.standardError = try FileHandle(forWritingTo: errors)
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            let said = (try? String(contentsOf: errors, encoding: .utf8)) ?? ""
            throw CLIFailure(
                description:
                    "sluice \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(text)\(said)")
        }
        return text
    }

    /// "...; 3/3 hosts applied in 240 ms" → 240.
    func appliedMilliseconds(_ text: String) -> Double? {
        guard let range = text.range(of: "hosts applied in ") else { return nil }
        return Double(text[range.upperBound...].prefix { $0.isNumber })
    }

    func waitUntil(seconds: Int, _ condition: () async -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if await condition() { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return await condition()
    }

    func endOffsets(_ cluster: String, topic: String, partitions: Int, logger: Logger) async throws -> [TopicPartition:
        Int64]
    {
        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(cluster, group: "fleet-check-\(UUID())"), logger: logger)
        let ends = try await consumer.queryHighWatermarks(
            for: (0..<partitions).map { TopicPartition(topic, Int32($0)) })
        await consumer.close()
        return ends
    }

    func committed(_ cluster: String, group: String, topic: String, partitions: Int, logger: Logger) async throws
        -> [TopicPartition: Int64]
    {
        let consumer = try KafkaConsumer(configuration: consumerConfiguration(cluster, group: group), logger: logger)
        let offsets = try await consumer.committedOffsets(
            for: (0..<partitions).map { TopicPartition(topic, Int32($0)) })
        await consumer.close()
        return offsets
    }
}

/// A CLI call that failed, with what it printed.
struct CLIFailure: Error, CustomStringConvertible {
    let description: String
}

/// A `sluice fleet-host` child and what it said.
final class FleetChild: Sendable {
    private struct State {
        /// (time, off, owned, paused) of each `S` line.
        var shards: [(Int64, Int, Int, Int)] = []
        /// Times of `H` lines.
        var handled: [Int64] = []
        /// Times the host's flags turned the topic off (`F MS off`).
        var flagOff: [Int64] = []
    }
    private let process: Process
    private let state = Mutex(State())

    init(arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
        let reader = output.fileHandleForReading
        Thread.detachNewThread { [self] in
            var pending: [UInt8] = []
            while true {
                let chunk = reader.availableData
                if chunk.isEmpty { return }
                pending += chunk
                while let newline = pending.firstIndex(of: 10) {
                    let words = String(decoding: pending[..<newline], as: UTF8.self).split(separator: " ")
                    pending.removeSubrange(...newline)
                    self.state.withLock { state in
                        if words.count == 5, words[0] == "S", let at = Int64(words[1]), let off = Int(words[2]),
                            let owned = Int(words[3]),
                            let paused = Int(words[4])
                        {
                            state.shards.append((at, off, owned, paused))
                        } else if words.count == 2, words[0] == "H", let at = Int64(words[1]) {
                            state.handled.append(at)
                        } else if words.count == 3, words[0] == "F", words[2] == "off", let at = Int64(words[1]) {
                            state.flagOff.append(at)
                        }
                    }
                }
            }
        }
    }

    /// Shards of the topic this host owns now.
    var owned: Int { state.withLock { $0.shards.last?.2 ?? 0 } }
    /// Of those, off now.
    var off: Int { state.withLock { $0.shards.last?.1 ?? 0 } }

    /// When every shard the host owns went off after `time` and stayed off since; nil if they are not all off.
    func offSince(_ time: Int64) -> Int64? { since(time) { $0.1 == $0.2 } }

    /// When every shard the host owns was paused for the flag (draining or off) after `time`.
    func pausedSince(_ time: Int64) -> Int64? { since(time) { $0.3 == $0.2 } }

    private func since(_ time: Int64, _ holds: @escaping ((Int64, Int, Int, Int)) -> Bool) -> Int64? {
        state.withLock { state in
            guard let last = state.shards.last, holds(last) else { return nil }
            // The first report after `time` from which on every report says it holds.
            var since = last.0
            for report in state.shards.reversed() {
                guard holds(report), report.0 >= time else { break }
                since = report.0
            }
            return since >= time ? since : time
        }
    }

    /// When the host's flags turned the topic off after `time`.
    func flagOff(after time: Int64) -> Int64? {
        state.withLock { state in state.flagOff.first { $0 >= time } }
    }

    /// The first message handled after `time`.
    func firstHandled(after time: Int64) -> Int64? {
        state.withLock { state in state.handled.first { $0 >= time } }
    }

    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }
}
