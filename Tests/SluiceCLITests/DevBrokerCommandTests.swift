import Foundation
import Logging
import SluiceKafka
import Testing

/// Runs the built `sluice` executable.
struct SluiceProcess {
    let process = Process()
    let stdin = Pipe()
    let stdout = Pipe()
    let stderr = Pipe()

    static func executable(_ name: String) -> URL {
        // The test bundle sits next to the products of the same build.
        var directory = Bundle.main.bundleURL
        while !FileManager.default.fileExists(atPath: directory.appendingPathComponent(name).path),
            directory.pathComponents.count > 1
        {
            directory.deleteLastPathComponent()
        }
        return directory.appendingPathComponent(name)
    }

    init(_ arguments: [String], executable: String = "sluice", environment: [String: String]? = nil) throws {
        process.executableURL = Self.executable(executable)
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.arguments = arguments
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
    }

    /// Reads stdout up to the first newline.
    func firstLine(timeout: Duration = .seconds(10)) throws -> String {
        var bytes: [UInt8] = []
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let chunk = stdout.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            bytes += chunk
            if let newline = bytes.firstIndex(of: 10) { return String(decoding: bytes[..<newline], as: UTF8.self) }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Reads stderr until it contains `text`.
    func waitForStandardError(containing text: String, timeout: Duration = .seconds(10)) -> String {
        var collected = ""
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline, !collected.contains(text) {
            let chunk = stderr.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            collected += String(decoding: chunk, as: UTF8.self)
        }
        return collected
    }

    func send(_ line: String) {
        stdin.fileHandleForWriting.write(Data((line + "\n").utf8))
    }
}

@Suite("sluice CLI", .timeLimit(.minutes(2)))
struct DevBrokerCommandTests {
    let logger = Logger(label: "sluice.cli-test")

    @Test("dev-broker prints one bootstrap line, serves clients, survives end of stdin, exits 0 on SIGTERM")
    func devBroker() async throws {
        let broker = try SluiceProcess(["dev-broker", "--brokers", "2", "--topic", "orders:3"])
        let line = try broker.firstLine()
        #expect(line.hasPrefix("bootstrap=127.0.0.1:"))
        let bootstrap = String(line.dropFirst("bootstrap=".count))
        #expect(bootstrap.split(separator: ",").count == 2)

        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: bootstrap), logger: logger)
        #expect(try await producer.partitionCount(topic: "orders") == 3)
        let report = try await producer.send(ProducerRecord(topic: "orders", partition: 1, value: Array("hi".utf8)))
        #expect(report.offset == 0)
        await producer.close()

        broker.stdin.fileHandleForWriting.closeFile()  // end of input must not stop it
        try await Task.sleep(for: .milliseconds(300))
        #expect(broker.process.isRunning)
        broker.process.terminate()
        broker.process.waitUntilExit()
        #expect(broker.process.terminationStatus == 0)
        let rest = String(decoding: broker.stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(rest.isEmpty, "exactly one stdout line")
    }

    @Test("dev-broker answers fault commands on stderr, naming what was wrong")
    func faultCommands() throws {
        let broker = try SluiceProcess(["dev-broker", "--brokers", "2", "--topic", "orders:3"])
        _ = try broker.firstLine()
        broker.send("broker down 2")
        broker.send("broker down 7")
        broker.send("error Fetch NOT_LEADER_FOR_PARTITION")
        broker.send("error Fetch NO_SUCH_ERROR")
        let answers = broker.waitForStandardError(containing: "NO_SUCH_ERROR")
        #expect(answers.contains("ok: broker down 2"))
        #expect(answers.contains("broker 7 does not exist; brokers are 1...2"))
        #expect(answers.contains("ok: error Fetch NOT_LEADER_FOR_PARTITION"))
        #expect(answers.contains("unknown error code 'NO_SUCH_ERROR'"))
        broker.process.terminate()
        broker.process.waitUntilExit()
    }

    @Test("dev-broker --port serves bootstrap on a fixed loopback port")
    func fixedPort() async throws {
        let port = Int.random(in: 20_000...40_000)
        let broker = try SluiceProcess(["dev-broker", "--topic", "orders:1", "--port", "\(port)"])
        #expect(try broker.firstLine() == "bootstrap=127.0.0.1:\(port)")
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: "127.0.0.1:\(port)"), logger: logger)
        #expect(try await producer.partitionCount(topic: "orders") == 1)
        await producer.close()
        broker.process.terminate()
        broker.process.waitUntilExit()
    }

    @Test("a bad --topic is refused with the spec named")
    func badTopic() throws {
        let broker = try SluiceProcess(["dev-broker", "--topic", "orders"])
        broker.process.waitUntilExit()
        #expect(broker.process.terminationStatus != 0)
        let message = String(decoding: broker.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(message.contains("--topic 'orders': expected NAME:PARTITIONS"))
    }

    @Test("produce writes per-key sequence numbers that a consumer sees in order")
    func producePayloads() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["load": 3])
        let produce = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "load", "--count", "600", "--keys", "6",
            "--size", "120",
        ])
        produce.process.waitUntilExit()
        #expect(produce.process.terminationStatus == 0)
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: "check")
        configuration.sessionTimeout = .seconds(6)
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        try await consumer.subscribe(topics: ["load"])
        var sequences: [String: [Int]] = [:]
        var total = 0
        events: for await event in consumer.events {
            guard case .assigned(let partitions) = event else { continue }
            for topicPartition in partitions {
                guard let messages = consumer.messages(for: topicPartition) else { continue }
                for await batch in messages {
                    for message in batch {
                        #expect(message.value.count == 120)
                        let text = String(decoding: message.value, as: UTF8.self)
                        let key = String(decoding: message.key ?? [], as: UTF8.self)
                        #expect(text.hasPrefix("{\"key\":\"\(key)\",\"seq\":"))
                        let sequence = Int(text.split(separator: ",")[1].split(separator: ":")[1])!
                        sequences[key, default: []].append(sequence)
                        total += 1
                    }
                    if total == 600 { break events }
                    if batch.last!.offset + 1 == consumer.cachedWatermarks(for: topicPartition)?.high { break }
                }
            }
        }
        #expect(total == 600)
        #expect(sequences.count == 6)
        for (key, values) in sequences {
            #expect(values == Array(0..<100), "\(key) in order")
        }
        await consumer.close()
    }
}
