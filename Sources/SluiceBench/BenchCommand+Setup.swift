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

/// What every case needs: the producer, the preload, configurations and formatting.
extension BenchCommand {
    /// Starts `sluice produce --rate` (100-byte messages over 1,000 keys; without a rate, as fast as it can) in
    /// a child process.
    func startProducer(_ cluster: String, topic: String, rate: Int?, count: Int) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments =
            [
                "produce", "--bootstrap", cluster, "--topic", topic, "--count", "\(count)", "--keys", "1000", "--size",
                "100",
            ]
            + (rate.map { ["--rate", "\($0)"] } ?? [])
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Preloads the topic with `sluice produce` (this executable) in a child process. `fixedBatches`: every
    /// produce request carries 500 messages of a partition (the last of each partition fewer), however fast
    /// the machine is, so the consumers of every run read the same record batches (`batch.num.messages` 500,
    /// `linger.ms` 1 s, far longer than a partition takes to gather 500 here); otherwise librdkafka's defaults, whose
    /// batches are what arrived within `linger.ms` (5 ms) and so follow the load of the machine.
    func preload(bootstrap: String, fixedBatches: Bool = false) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments =
            [
                "produce", "--bootstrap", bootstrap, "--topic", "bench", "--count", "\(messages)", "--keys", "10000",
                "--size", "\(messageBytes)",
            ]
            + (fixedBatches
                ? ["--property", "batch.num.messages=500", "--property", "linger.ms=1000"] : [])
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ValidationError("preloading failed (sluice produce exited \(process.terminationStatus))")
        }
    }

    /// Messages per partition of the benchmark topic, from its watermarks.
    func partitionCounts(bootstrap: String, logger: Logger) async throws -> [Int32: Int] {
        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration(bootstrap, group: "counts"), logger: logger)
        var counts: [Int32: Int] = [:]
        for partition in 0..<Int32(partitions) {
            let watermarks = try await consumer.queryWatermarks(for: TopicPartition("bench", partition))
            counts[partition] = Int(watermarks.high - watermarks.low)
        }
        await consumer.close()
        return counts
    }

    /// A host of the bench: a fresh group and state directory, the bench's session (`sessionTimeout`), no admin
    /// API, the bench's memory budget.
    func hostConfiguration(_ cluster: String, group: String, topics: [String: TopicConfiguration])
        -> SluiceConfiguration
    {
        var kafka = SluiceConfiguration.Kafka(bootstrap: cluster, group: "\(group)-\(UUID())")
        kafka.sessionTimeout = sessionTimeout
        var configuration = SluiceConfiguration(kafka: kafka, topics: topics)
        configuration.stateDirectory =
            FileManager.default.temporaryDirectory.appendingPathComponent("sluice-state-\(UUID().uuidString)").path
        configuration.admin.enabled = false
        configuration.memoryBudget = memoryBudget
        for entry in consumerProperty {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            configuration.kafka.properties[parts[0]] = parts[1]
        }
        for entry in producerProperty {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            configuration.kafka.producerProperties[parts[0]] = parts[1]
        }
        return configuration
    }

    /// The consumers' session: 6 s, so a dead one is noticed within a run; 60 s under callgrind, whose threads
    /// run one at a time tens of times slower (with 6 s, a heartbeat came too late beside a test run, the member was
    /// dropped, and the rebalance handed 1,609 messages out again inside the measured span).
    var sessionTimeout: Duration { instructionCase == nil ? .seconds(6) : .seconds(60) }

    func consumerConfiguration(_ cluster: String, group: String) -> KafkaConsumerConfiguration {
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster, groupID: group)
        configuration.sessionTimeout = sessionTimeout
        return configuration
    }

    func note(_ text: String) { FileHandle.standardError.write(Data("bench: \(text)\n".utf8)) }
    func pad(_ value: Int, width: Int = 14) -> String {
        String(repeating: " ", count: max(0, width - String(value).count)) + String(value)
    }
    func median(_ sorted: [Double]) -> Double { sorted.isEmpty ? 0 : sorted[sorted.count / 2] }
    func ms(_ seconds: Double) -> Int { Int((seconds * 1000).rounded()) }
}
