import Foundation
import Logging
import SluiceKafka
import Testing

@Suite("sluice CLI", .timeLimit(.minutes(2)))
struct DevBrokerCommandTests {
    let logger = Logger(label: "sluice.cli-test")

    @Test("dev-broker prints one bootstrap line, serves clients, survives end of stdin, exits 0 on SIGTERM")
    func devBroker() async throws {
        let broker = try SluiceProcess(["dev-broker", "--brokers", "2", "--topic", "orders:3"])
        let line = await broker.firstLine()
        #expect(line.hasPrefix("bootstrap=127.0.0.1:"))
        let bootstrap = String(line.dropFirst("bootstrap=".count))
        #expect(bootstrap.split(separator: ",").count == 2)

        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: bootstrap), logger: logger)
        #expect(try await producer.partitionCount(topic: "orders") == 3)
        let report = try await producer.send(ProducerRecord(topic: "orders", partition: 1, value: Array("hi".utf8)))
        #expect(report.offset == 0)
        await producer.close()

        try broker.stdin.close()  // end of input must not stop it
        try await Task.sleep(for: .milliseconds(300))
        #expect(broker.process.isRunning)
        broker.process.terminate()
        #expect(await broker.exit() == 0)
        let all = await broker.output.all()
        #expect(all == line + "\n", "exactly one stdout line")
    }

    @Test("dev-broker answers fault commands on stderr, naming what was wrong")
    func faultCommands() async throws {
        let broker = try SluiceProcess(["dev-broker", "--brokers", "2", "--topic", "orders:3"])
        _ = await broker.firstLine()
        broker.send("broker down 2")
        broker.send("broker down 7")
        broker.send("error Fetch NOT_LEADER_FOR_PARTITION")
        broker.send("error Fetch NO_SUCH_ERROR")
        let answers = await broker.waitForStandardError(containing: "NO_SUCH_ERROR")
        #expect(answers.contains("ok: broker down 2"))
        #expect(answers.contains("broker 7 does not exist; brokers are 1...2"))
        #expect(answers.contains("ok: error Fetch NOT_LEADER_FOR_PARTITION"))
        #expect(answers.contains("unknown error code 'NO_SUCH_ERROR'"))
        broker.process.terminate()
        await broker.exit()
    }

    @Test("dev-broker --port serves bootstrap on a fixed loopback port")
    func fixedPort() async throws {
        // Below Linux's ephemeral range (32768 and up), where the suite's many clients take their ports; a port
        // another program holds anyway makes the broker refuse to start, and the test tries another.
        var port = 0
        var broker: SluiceProcess?
        var said = ""
        for _ in 0..<5 {
            port = Int.random(in: 20_000...32_000)
            let started = try SluiceProcess(["dev-broker", "--topic", "orders:1", "--port", "\(port)"])
            said = await started.firstLine()
            if said == "bootstrap=127.0.0.1:\(port)" {
                broker = started
                break
            }
            started.process.terminate()
            _ = await started.exit()
        }
        let running = try #require(broker, "the dev broker started on a fixed port: \(said)")
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: "127.0.0.1:\(port)"), logger: logger)
        #expect(try await producer.partitionCount(topic: "orders") == 1)
        await producer.close()
        running.process.terminate()
        await running.exit()
    }

    @Test("a bad --topic is refused with the spec named")
    func badTopic() async throws {
        let broker = try SluiceProcess(["dev-broker", "--topic", "orders"])
        let status = await broker.exit()
        #expect(status != nil && status != 0)
        let message = await broker.errors.all()
        #expect(message.contains("--topic 'orders': expected NAME:PARTITIONS"))
    }

    @Test("produce writes per-key sequence numbers that a consumer sees in order")
    func producePayloads() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["load": 3])
        let produce = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "load", "--count", "600", "--keys", "6",
            "--size", "120",
        ])
        await produce.expectCleanExit()
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
