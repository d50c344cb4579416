import Foundation
import SluiceKafka
import Testing

@testable import Sluice
@testable import SluiceKafka

@Suite("Loading sluice.yaml", .timeLimit(.minutes(2)))
struct ConfigurationLoadingTests {
    static let example = """
        kafka:
          bootstrap: localhost:9092
          group: orders-service
          sessionTimeout: 6s
          properties: { fetch.wait.max.ms: "10", client.rack: eu-1 }
        topics:
          orders:
            ordering: key
            processors: 8
            maxInFlight: 2000
            onFailure: { retries: 3, backoff: 100ms..5s, then: deadLetter }
            deadLetterTopic: orders.dlq
            handlerTimeout: 2s
          payments:
            batch: { size: 100, timeout: 200ms }
        host:
          shutdownTimeout: 20s
        """

    func write(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-\(UUID().uuidString).yaml")
            .path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func loadError(_ text: String, environment: [String: String] = [:]) async throws -> String {
        let path = try write(text)
        do {
            _ = try await SluiceConfiguration.load(file: path, environment: environment)
            Issue.record("expected the load to fail")
            return ""
        } catch let error as SluiceError {
            #expect(error.code == .configuration)
            return error.message.replacingOccurrences(of: path, with: "FILE")
        }
    }

    @Test(
        "the control plane's clients reach the brokers as the consumer does: TLS verification, CA, SASL and OAUTHBEARER settings pass, consuming settings do not"
    )
    func controlClientsGetConnectionProperties() {
        var configuration = SluiceConfiguration(kafka: .init(bootstrap: "b:9092", group: "g"), topics: [:])
        configuration.kafka.properties = [
            "security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
            "enable.ssl.certificate.verification": "true",
            "ssl.ca.location": "/ca.pem", "https.ca.location": "/ca.pem",
            "ssl.endpoint.identification.algorithm": "https", "fetch.min.bytes": "1",
            "auto.offset.reset": "latest", "client.dns.lookup": "use_all_dns_ips",
        ]
        #expect(
            Set(configuration.controlProperties.keys)
                == Set(configuration.kafka.properties.keys).subtracting(["fetch.min.bytes", "auto.offset.reset"]))
    }

    @Test("every key of the example is read")
    func readsEverything() async throws {
        let configuration = try await SluiceConfiguration.load(file: try write(Self.example), environment: [:])
        #expect(configuration.kafka.bootstrap == "localhost:9092")
        #expect(configuration.kafka.group == "orders-service")
        #expect(configuration.kafka.sessionTimeout == .seconds(6))
        #expect(configuration.kafka.properties == ["fetch.wait.max.ms": "10", "client.rack": "eu-1"])
        let orders = try #require(configuration.topics["orders"])
        #expect(orders.ordering == .key)
        #expect(orders.processors == 8)
        #expect(orders.maxInFlight == 2000)
        #expect(
            orders.onFailure
                == .init(
                    retries: 3, backoff: .init(initial: .milliseconds(100), maximum: .seconds(5)), then: .deadLetter))
        #expect(orders.deadLetterTopic == "orders.dlq")
        #expect(orders.handlerTimeout == .seconds(2))
        #expect(configuration.topics["payments"]?.batch == .init(size: 100, timeout: .milliseconds(200)))
        #expect(configuration.topics["payments"]?.ordering == .partition)
        #expect(configuration.shutdownTimeout == .seconds(20))
        #expect(configuration.revokeTimeout == .seconds(10))
    }

    @Test("the environment overrides the file, key by key")
    func environmentOverrides() async throws {
        let configuration = try await SluiceConfiguration.load(
            file: try write(Self.example),
            environment: [
                "SLUICE_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
                "SLUICE_TOPICS_ORDERS_MAX_IN_FLIGHT": "500",
                "SLUICE_TOPICS_PAYMENTS_BATCH_TIMEOUT": "1s",
                "SLUICE_HOST_DRAIN_TIMEOUT": "3s",
            ])
        #expect(configuration.kafka.bootstrap == "kafka-1:9092,kafka-2:9092")
        #expect(configuration.topics["orders"]?.maxInFlight == 500)
        #expect(configuration.topics["payments"]?.batch?.timeout == .seconds(1))
        #expect(configuration.drainTimeout == .seconds(3))
    }

    @Test("breaker presets and fields, and the flags section")
    func breakerAndFlags() async throws {
        let yaml = """
            kafka: {bootstrap: b, group: g}
            flags: {pollInterval: 500ms, default: on, file: flags.yaml}
            topics:
              latched: {breaker: latched}
              tuned:
                breaker: {preset: fuse, restartBackoff: 2s..1m, trip: {crashes: 3, within: 5m}, cooldown: 15m, healthyAfter: 2m}
              forever: {breaker: {trip: never}}
              plain: {}
            """
        let configuration = try await SluiceConfiguration.load(
            file: try write(yaml), environment: ["SLUICE_FLAGS_FILE": "/etc/sluice/flags.yaml"])
        #expect(configuration.flags.pollInterval == .milliseconds(500))
        #expect(configuration.flags.defaultEnabled)
        #expect(configuration.flags.file == "/etc/sluice/flags.yaml")
        #expect(configuration.topics["latched"]?.breaker == .latched)
        #expect(
            configuration.topics["tuned"]?.breaker
                == BreakerPolicy(
                    restartBackoff: .init(initial: .seconds(2), maximum: .seconds(60)),
                    trip: .init(crashes: 3, within: .seconds(300)),
                    cooldown: .seconds(900), healthyAfter: .seconds(120)))
        #expect(configuration.topics["forever"]?.breaker.trip == nil)
        #expect(configuration.topics["plain"]?.breaker == .standard)
        #expect(
            try await loadError("kafka: {bootstrap: b, group: g}\ntopics:\n  t: {breaker: fast}\n")
                == "FILE:3:16: topics.t.breaker: unknown breaker preset 'fast'; known: backoff, fuse, latched, standard"
        )
        #expect(
            try await loadError("kafka: {bootstrap: b, group: g}\nflags: {default: maybe}\n")
                == "FILE:2:18: flags.default: expected on or off, got 'maybe'")
    }

    @Test("a topic name with a dot works from the file and from the environment")
    func dottedTopicName() async throws {
        let yaml = "kafka: {bootstrap: b, group: g}\ntopics:\n  orders.v2:\n    processors: 3\n    maxInFlight: 10\n"
        let configuration = try await SluiceConfiguration.load(
            file: try write(yaml), environment: ["SLUICE_TOPICS_ORDERS_V2_MAX_IN_FLIGHT": "20"])
        #expect(configuration.topics["orders.v2"]?.processors == 3)
        #expect(configuration.topics["orders.v2"]?.maxInFlight == 20)
    }

    @Test("an unknown key names the file, line, column and key path")
    func unknownKey() async throws {
        let message = try await loadError(
            Self.example.replacingOccurrences(of: "    processors: 8", with: "    procesors: 8"))
        #expect(
            message.hasPrefix(
                "FILE:9:5: topics.orders.procesors: unknown key (known keys here: abandonTimeout, batch, breaker, deadLetterTopic"
            ))
    }

    @Test("a wrong type, a bad duration, a bad choice each name where and why")
    func badValues() async throws {
        #expect(
            try await loadError(Self.example.replacingOccurrences(of: "processors: 8", with: "processors: many"))
                == "FILE:9:17: topics.orders.processors: expected a whole number, got 'many'")
        #expect(
            try await loadError(Self.example.replacingOccurrences(of: "handlerTimeout: 2s", with: "handlerTimeout: 2"))
                == "FILE:13:21: topics.orders.handlerTimeout: expected a duration with a unit (ms, s, m, h), e.g. 200ms or 1.5s, got '2'"
        )
        #expect(
            try await loadError(Self.example.replacingOccurrences(of: "ordering: key", with: "ordering: random"))
                == "FILE:8:15: topics.orders.ordering: expected one of partition, key, none, got 'random'")
        #expect(
            try await loadError(Self.example.replacingOccurrences(of: "ordering: key", with: "output: twice"))
                == "FILE:8:13: topics.orders.output: expected one of atLeastOnce, exactlyOnce, got 'twice'")
        #expect(
            try await loadError(Self.example.replacingOccurrences(of: "backoff: 100ms..5s", with: "backoff: 100ms"))
                == "FILE:11:39: topics.orders.onFailure.backoff: expected a range like 100ms..5s, got '100ms'")
        #expect(
            try await loadError(Self.example.replacingOccurrences(of: "  orders:\n", with: "  orders: [1, 2]\n  x:\n"))
                .contains("topics.orders: expected a mapping of keys"))
    }

    @Test("a bad value from the environment names the variable")
    func badEnvironmentValue() async throws {
        #expect(
            try await loadError(Self.example, environment: ["SLUICE_TOPICS_ORDERS_PROCESSORS": "eight"])
                == "environment variable SLUICE_TOPICS_ORDERS_PROCESSORS: topics.orders.processors: expected a whole number, got 'eight'"
        )
    }

    @Test("a topic in the file without a registered handler stops the host, naming the file and key")
    func topicWithoutHandler() async throws {
        let path = try write(Self.example)
        let host = SluiceHost(configuration: try await SluiceConfiguration.load(file: path, environment: [:]))
        host.register("orders", ClosureHandler { _, _ in })
        let error = await #expect(throws: SluiceError.self) { try await host.run() }
        #expect(
            error?.message
                == "\(path): topics.payments: topic 'payments' is configured but no handler is registered for it (host.register(\"payments\", ...))"
        )
    }

    @Test("maxInFlight defaults to 1,000 or four batches, whichever is more; a value in the file wins")
    func maxInFlightDefault() async throws {
        let configuration = try await SluiceConfiguration.load(file: try write(Self.example), environment: [:])
        #expect(configuration.topics["orders"]?.maxInFlight == 2000)
        #expect(configuration.topics["payments"]?.maxInFlight == 1000, "4 × 100 is less than 1,000")
        var batching = TopicConfiguration()
        batching.batch = .init(size: 500, timeout: .milliseconds(50))
        #expect(batching.maxInFlight == 2000)
        batching.maxInFlight = 600
        #expect(batching.maxInFlight == 600)
    }

    @Test("missing required keys and inconsistent settings are refused")
    func missingAndInconsistent() async throws {
        #expect(
            try await loadError("kafka:\n  group: g\n")
                == "FILE: kafka.bootstrap: required (or set SLUICE_KAFKA_BOOTSTRAP)")
        #expect(
            try await loadError(Self.example.replacingOccurrences(of: "    deadLetterTopic: orders.dlq\n", with: ""))
                == "FILE: topics.orders.deadLetterTopic: is required when onFailure.then is deadLetter")
        #expect(
            try await loadError(
                Self.example.replacingOccurrences(of: "{ size: 100, timeout: 200ms }", with: "{ size: 100 }"))
                == "FILE:15:12: topics.payments.batch: needs both size and timeout, e.g. {size: 100, timeout: 200ms}")
        #expect(
            try await loadError(
                Self.example.replacingOccurrences(
                    of: "{ size: 100, timeout: 200ms }", with: "{ size: 100, timeout: 200ms }\n    maxInFlight: 50")
            )
            .hasSuffix(
                "topics.payments.maxInFlight: must be at least batch.size (100), got 50: a batch could never fill"))
        #expect(try await loadError("kafka: [\n").hasPrefix("FILE: not valid YAML"))
        #expect(
            try await loadError("kafka:\n  bootstrap: x\n  group: g\ntelemetry:\n  port: 9\n").hasPrefix(
                "FILE:4:1: telemetry: unknown key"))
        #expect(
            try await loadError("kafka:\n  bootstrap: x\n  group: g\nmetrics:\n  port: 9\n").hasPrefix(
                "FILE:5:3: metrics.port: unknown key"))
        #expect(
            try await loadError("kafka: {bootstrap: b, group: g}\nadmin: {listen: nowhere}\n")
                == "FILE:2:17: admin.listen: expected HOST:PORT, e.g. 127.0.0.1:8080, got 'nowhere'")
        #expect(
            try await loadError("kafka: {bootstrap: b, group: g}\nadmin: {token: \"${NO_SUCH_TOKEN_VARIABLE}\"}\n")
                == "FILE:2:16: admin.token: refers to the environment variable NO_SUCH_TOKEN_VARIABLE, which is not set"
        )
    }

    @Test("unsafe values are refused with the file, key and reason")
    func unsafeValues() async throws {
        let base = "kafka: {bootstrap: b, group: g}\n"
        #expect(
            try await loadError("kafka: {bootstrap: b, group: g, commitInterval: 0s}\n")
                == "FILE:1:49: kafka.commitInterval: must be at least 10ms (0 makes the consumer thread spin), got 0s")
        #expect(
            try await loadError(base + "topics:\n  orders: {breaker: {preset: fuse, cooldown: 0s}}\n")
                == "FILE:3:46: topics.orders.breaker.cooldown: must be positive or never (0 probes at once: a hot crash loop), got 0s"
        )
        #expect(
            try await loadError(base + "topics:\n  orders: {onFailure: {then: deadLetter}, deadLetterTopic: orders}\n")
                == "FILE:3:60: topics.orders.deadLetterTopic: 'orders' is a consumed topic: its dead letters would be consumed and fail again, for ever"
        )
        #expect(
            try await loadError(
                base + "topics:\n  orders: {onFailure: {then: deadLetter}, deadLetterTopic: payments}\n  payments: {}\n"
            )
                == "FILE:3:60: topics.orders.deadLetterTopic: 'payments' is a consumed topic: its dead letters would be consumed and fail again, for ever"
        )
        #expect(
            try await loadError(base + "admin: {token: \"\"}\n")
                == "FILE:2:16: admin.token: is empty, which would leave changes open to anyone; remove the key to run without a token"
        )
        #expect(
            try await loadError(base + "topics:\n  \"bad topic\": {}\n")
                == "FILE:3:16: topics.bad topic: not a Kafka topic name: only letters, digits, '.', '_' and '-' are allowed"
        )
        #expect(
            try await loadError(base + "flags: {pollInterval: 0s}\n")
                == "FILE:2:23: flags.pollInterval: must be at least 10ms, got 0s")
    }

    @Test("dead-letter producer properties: only the producer gets them, over the shared ones")
    func producerProperties() async throws {
        let path = try write(
            """
            kafka:
              bootstrap: b
              group: g
              properties: { security.protocol: ssl, enable.ssl.certificate.verification: "true", ssl.endpoint.identification.algorithm: https, fetch.wait.max.ms: "10", socket.timeout.ms: "30000" }
              producerProperties: { message.timeout.ms: "5000", acks: all, socket.timeout.ms: "10000" }
            """)
        let configuration = try await SluiceConfiguration.load(file: path, environment: [:])
        #expect(
            configuration.kafka.producerProperties == [
                "message.timeout.ms": "5000", "acks": "all", "socket.timeout.ms": "10000",
            ])
        let producer = Dictionary(uniqueKeysWithValues: configuration.producerConfiguration().librdkafkaProperties())
        #expect(producer["message.timeout.ms"] == "5000")
        #expect(producer["acks"] == "all")
        #expect(producer["security.protocol"] == "ssl", "shared properties still reach the producer")
        #expect(
            producer["enable.ssl.certificate.verification"] == "true",
            "every connection property reaches it, as it reaches the control plane")
        #expect(producer["ssl.endpoint.identification.algorithm"] == "https")
        #expect(
            configuration.controlProperties.keys.sorted()
                == producer.keys.filter { configuration.controlProperties[$0] != nil }.sorted())
        #expect(producer["socket.timeout.ms"] == "10000", "the producer's own value wins")
        #expect(producer["fetch.wait.max.ms"] == nil, "consumer-only properties do not")
        #expect(
            configuration.consumerConfiguration().properties["message.timeout.ms"] == nil,
            "the consumer does not get them")
    }

    @Test("control plane settings: read from the file, with the group's default topic; a bad topic is refused")
    func controlSettings() async throws {
        let base = "kafka: {bootstrap: b, group: orders-service}\n"
        let defaults = try await SluiceConfiguration.load(file: try write(base), environment: [:])
        #expect(defaults.control.enabled == false)
        #expect(defaults.controlTopic == "__sluice-control-orders-service")
        let path = try write(base + "control: {enabled: true, topic: ops.control, loadTimeout: 5s}\n")
        let configuration = try await SluiceConfiguration.load(file: path, environment: [:])
        #expect(configuration.control.enabled)
        #expect(configuration.controlTopic == "ops.control")
        #expect(configuration.control.loadTimeout == .seconds(5))
        #expect(defaults.control.createTopics && defaults.control.replicationFactor == -1)
        let byHand = try await SluiceConfiguration.load(
            file: try write(base + "control: {enabled: true, createTopics: off, replicationFactor: 3}\n"),
            environment: [:])
        #expect(!byHand.control.createTopics && byHand.control.replicationFactor == 3)
        #expect(
            try await loadError(base + "control: {replicationFactor: 0}\n")
                == "FILE:2:30: control.replicationFactor: must be -1 (the brokers' default) or at least 1, got 0")
        #expect(
            try await loadError(base + "control: {topic: \"a b\"}\n")
                == "FILE:2:18: control.topic: not a Kafka topic name: only letters, digits, '.', '_' and '-' are allowed"
        )
    }

    @Test("handler threads: read from the file, and nonsense refused with the key and reason")
    func handlerThreads() async throws {
        let base = "kafka: {bootstrap: b, group: g}\n"
        let path = try write(base + "host: {handlerThreads: 8, maxHandlerThreads: 32, blockedThreadAfter: 250ms}\n")
        let configuration = try await SluiceConfiguration.load(file: path, environment: [:])
        #expect(configuration.handlerThreads == 8)
        #expect(configuration.maxHandlerThreads == 32)
        #expect(configuration.blockedThreadAfter == .milliseconds(250))
        #expect(
            try await loadError(base + "host: {handlerThreads: 0}\n")
                == "FILE:2:24: host.handlerThreads: must be 1...1024, got 0")
        #expect(
            try await loadError(base + "host: {handlerThreads: 8, maxHandlerThreads: 4}\n")
                == "FILE:2:46: host.maxHandlerThreads: must be at least host.handlerThreads (8) and at most 4096, got 4"
        )
        #expect(
            try await loadError(base + "host: {blockedThreadAfter: 10ms}\n")
                == "FILE:2:28: host.blockedThreadAfter: must be at least 100ms (shorter flags ordinary work as blocking), got 10ms"
        )
    }

    @Test("static membership: read from the file, passed to librdkafka, nonsense refused with the key")
    func staticMembership() async throws {
        let base = "kafka: {bootstrap: b, group: g, groupInstanceId: orders-7}\n"
        let path = try write(base)
        let configuration = try await SluiceConfiguration.load(file: path, environment: [:])
        #expect(configuration.kafka.groupInstanceId == "orders-7")
        let properties = try configuration.consumerConfiguration().librdkafkaProperties()
        #expect(properties.contains { $0 == ("group.instance.id", "orders-7") })
        let dynamic = try await SluiceConfiguration.load(
            file: try write("kafka: {bootstrap: b, group: g}\n"), environment: [:])
        #expect(dynamic.kafka.groupInstanceId == nil)
        #expect(
            try dynamic.consumerConfiguration().librdkafkaProperties().allSatisfy { $0.0 != "group.instance.id" },
            "no group.instance.id: a dynamic member")
        let refused = try await loadError("kafka: {bootstrap: b, group: g, groupInstanceId: 'pod 1'}\n")
        #expect(
            refused
                == "FILE:1:50: kafka.groupInstanceId: must be 1 to 245 letters, digits, '.', '_' or '-', got 'pod 1'",
            "\(refused)")
    }

    @Test("worker processes: host.workers read from the file and the environment; out of range refused with the key")
    func workers() async throws {
        let base = "kafka: {bootstrap: b, group: g, groupInstanceId: pod-1}\n"
        let configuration = try await SluiceConfiguration.load(
            file: try write(base + "host: {workers: 2}\n"), environment: [:])
        #expect(configuration.workers == 2)
        let fromEnvironment = try await SluiceConfiguration.load(
            file: try write(base), environment: ["SLUICE_HOST_WORKERS": "3"])
        #expect(fromEnvironment.workers == 3)
        #expect(
            try await loadError(base + "host: {workers: 65}\n") == "FILE:2:17: host.workers: must be 0...64, got 65")
        // What a worker of slot 1 runs with: its own static member id and state directory.
        let worker = try #require(
            WorkerEnvironment([WorkerEnvironment.slotVariable: "1", WorkerEnvironment.livenessVariable: "3"]))
        let adjusted = worker.workerConfiguration(configuration)
        #expect(adjusted.kafka.groupInstanceId == "pod-1-w1" && adjusted.stateDirectory == ".sluice/w1")
        for bad in [["1", "2"], ["64", "3"], ["-1", "3"], ["x", "3"], ["1", "x"], ["99999", "3"]] {
            #expect(
                WorkerEnvironment([WorkerEnvironment.slotVariable: bad[0], WorkerEnvironment.livenessVariable: bad[1]])
                    == nil, "not a worker's environment: \(bad)")
        }
        #expect(WorkerEnvironment([:]) == nil)
    }

    @Test("crash containment: onCrash and the state directory are read; nonsense is refused with the key and reason")
    func crashContainment() async throws {
        let base = "kafka: {bootstrap: b, group: g}\n"
        let path = try write(
            base + "metrics: {perPartition: off}\nhost: {stateDirectory: /var/lib/orders, crashJournal: off}\n"
                + "topics:\n  orders: {onCrash: {after: 2, then: deadLetter}, deadLetterTopic: orders.dlq}\n  payments: {}\n"
        )
        let configuration = try await SluiceConfiguration.load(file: path, environment: [:])
        #expect(configuration.stateDirectory == "/var/lib/orders")
        #expect(configuration.crashJournal == false)
        #expect(configuration.perPartitionMetrics == false)
        #expect(configuration.topics["orders"]?.onCrash == TopicConfiguration.CrashPolicy(after: 2, then: .deadLetter))
        #expect(configuration.topics["payments"]?.onCrash == TopicConfiguration.CrashPolicy(after: 1, then: .stop))
        #expect(
            try await loadError(base + "topics:\n  orders: {onCrash: {after: 0}}\n").hasSuffix(
                "topics.orders.onCrash.after: must be at least 1, got 0"))
        #expect(
            try await loadError(base + "topics:\n  orders: {onCrash: {then: deadLetter}}\n")
                .hasSuffix("topics.orders.deadLetterTopic: is required when onCrash.then is deadLetter"))
        #expect(
            try await loadError(base + "topics:\n  orders: {onCrash: {then: ignore}}\n").contains(
                "expected one of stop, deadLetter, got 'ignore'"))
        #expect(try await loadError(base + "host: {stateDirectory: ' '}\n").contains("host.stateDirectory: is empty"))
    }

    @Test(
        "memory budget: sizes with units, off, the default; it sets the buffers' byte budget and librdkafka's queue, a property of the user's own wins; nonsense is refused"
    )
    func memoryBudget() async throws {
        let base = "kafka: {bootstrap: b, group: g}\ntopics: {orders: {}}\n"
        let defaults = try await SluiceConfiguration.load(file: try write(base), environment: [:])
        #expect(defaults.memoryBudget == 256 << 20)
        let consumer = defaults.consumerConfiguration()
        #expect(consumer.partitionBufferBytes == 128 << 20)
        #expect(consumer.properties["queued.max.messages.kbytes"] == "16384")

        for (written, bytes) in [
            ("64MiB", 64 << 20), ("1.5GiB", 1536 << 20), ("100MB", 100_000_000), ("33554432", 32 << 20),
        ] {
            let configuration = try await SluiceConfiguration.load(
                file: try write(base + "host: {memoryBudget: \(written)}\n"), environment: [:])
            #expect(configuration.memoryBudget == bytes, "\(written)")
        }
        let small = try await SluiceConfiguration.load(
            file: try write(base + "host: {memoryBudget: 32MiB}\n"), environment: [:])
        #expect(small.consumerConfiguration().partitionBufferBytes == 16 << 20)
        #expect(small.consumerConfiguration().properties["queued.max.messages.kbytes"] == "2048")

        let off = try await SluiceConfiguration.load(
            file: try write(base + "host: {memoryBudget: off}\n"), environment: [:])
        #expect(off.memoryBudget == nil)
        #expect(off.consumerConfiguration().partitionBufferBytes == nil)
        #expect(off.consumerConfiguration().properties["queued.max.messages.kbytes"] == nil)

        let own = try await SluiceConfiguration.load(
            file: try write(
                base.replacingOccurrences(
                    of: "group: g}", with: "group: g, properties: {queued.max.messages.kbytes: '4096'}}")),
            environment: [:])
        #expect(own.consumerConfiguration().properties["queued.max.messages.kbytes"] == "4096")

        #expect(
            try await loadError(base + "host: {memoryBudget: lots}\n").contains(
                "host.memoryBudget: expected a size with a unit"))
        #expect(
            try await loadError(base + "host: {memoryBudget: 4MiB}\n").hasSuffix(
                "host.memoryBudget: must be at least 16MiB, got 4MiB"))
        #expect(
            try await loadError(base + "host: {memoryBudget: -5MiB}\n").contains("host.memoryBudget: expected a size"))
    }

    @Test("topics.T.output: at least once by default, exactly once from the file or the environment")
    func outputGuarantee() async throws {
        let plain = try await SluiceConfiguration.load(file: try write(Self.example), environment: [:])
        #expect(plain.topics["orders"]?.output == .atLeastOnce)
        let fromFile = try await SluiceConfiguration.load(
            file: try write(Self.example.replacingOccurrences(of: "ordering: key", with: "output: exactlyOnce")),
            environment: [:])
        #expect(fromFile.topics["orders"]?.output == .exactlyOnce)
        let fromEnvironment = try await SluiceConfiguration.load(
            file: try write(Self.example), environment: ["SLUICE_TOPICS_ORDERS_OUTPUT": "exactlyOnce"])
        #expect(fromEnvironment.topics["orders"]?.output == .exactlyOnce)
    }

    @Test("a duration past what Duration holds (1e20s) is refused with the key, not a trap")
    func hugeDurationRefused() async throws {
        #expect(
            try await loadError(
                Self.example.replacingOccurrences(of: "handlerTimeout: 2s", with: "handlerTimeout: 1e20s"))
                == "FILE:13:21: topics.orders.handlerTimeout: expected a duration with a unit (ms, s, m, h), e.g. 200ms or 1.5s, got '1e20s'"
        )
        #expect(
            try await loadError(
                Self.example.replacingOccurrences(of: "backoff: 100ms..5s", with: "backoff: 1ms..1e300h"))
                == "FILE:11:39: topics.orders.onFailure.backoff: expected a range like 100ms..5s, got '1ms..1e300h'")
    }

    @Test("onFailure retryLater: delays from a list in the file or the environment; nonsense refused with the key")
    func retryLaterDelays() async throws {
        let retrying = Self.example.replacingOccurrences(
            of: "then: deadLetter }", with: "then: retryLater, delays: [30s, 5m, 1h] }")
        let loaded = try await SluiceConfiguration.load(file: try write(retrying), environment: [:])
        #expect(loaded.topics["orders"]?.onFailure.then == .retryLater)
        #expect(loaded.topics["orders"]?.onFailure.delays == [.seconds(30), .seconds(300), .seconds(3600)])
        #expect(loaded.topics["orders"]?.onFailure.createTopics == true)
        let fromEnvironment = try await SluiceConfiguration.load(
            file: try write(retrying),
            environment: [
                "SLUICE_TOPICS_ORDERS_ON_FAILURE_DELAYS": "1500ms,2m",
                "SLUICE_TOPICS_ORDERS_ON_FAILURE_CREATE_TOPICS": "off",
            ])
        #expect(fromEnvironment.topics["orders"]?.onFailure.delays == [.milliseconds(1500), .seconds(120)])
        #expect(fromEnvironment.topics["orders"]?.onFailure.createTopics == false)
        let single = try await SluiceConfiguration.load(
            file: try write(retrying.replacingOccurrences(of: "[30s, 5m, 1h]", with: "10s")), environment: [:])
        #expect(single.topics["orders"]?.onFailure.delays == [.seconds(10)])
        // The host's retry topics: one per delay, named by it, with the topic's settings.
        let expanded = loaded.withRetryTopics()
        #expect(
            expanded.topics.keys.sorted() == [
                "orders", "orders.retry.1h", "orders.retry.30s", "orders.retry.5m", "payments",
            ])
        #expect(
            expanded.topics["orders.retry.5m"]?.retryStage == .init(topic: "orders", index: 1, delay: .seconds(300)))
        #expect(expanded.topics["orders.retry.5m"]?.processors == 8)
        #expect(TopicConfiguration.retryTopic(of: "orders", delay: .milliseconds(1500)) == "orders.retry.1500ms")
        #expect(loaded.retryTopicClashes.isEmpty && expanded.retryTopicClashes.isEmpty)
        var clashing = loaded
        clashing.topics["orders.retry.5m"] = TopicConfiguration()
        #expect(clashing.withRetryTopics().retryTopicClashes.map(\.retryTopic) == ["orders.retry.5m"])

        for (replacement, why) in [
            (
                "then: retryLater }",
                "FILE: topics.orders.onFailure.delays: needs at least one delay with onFailure.then: retryLater, e.g. [30s, 5m]"
            ),
            ("then: retryLater, delays: [30s, 30000ms] }", "FILE: topics.orders.onFailure.delays: lists 30s twice"),
            (
                "then: retryLater, delays: [2d] }",
                "FILE:11:76: topics.orders.onFailure.delays: expected durations with a unit (ms, s, m, h), e.g. [30s, 5m], got '2d'"
            ),
            (
                "then: retryLater, delays: [25h] }",
                "FILE: topics.orders.onFailure.delays: each delay must be a whole number of milliseconds from 1ms to 24h, got 90000.0 seconds"
            ),
            (
                "then: skip, delays: [1s] }",
                "FILE: topics.orders.onFailure.delays: is only used with onFailure.then: retryLater, got then: skip"
            ),
            (
                "then: retryLater, delays: [[1s]] }",
                "FILE:11:77: topics.orders.onFailure.delays: expected a list of single values"
            ),
        ] {
            let message = try await loadError(
                Self.example.replacingOccurrences(of: "then: deadLetter }", with: replacement))
            #expect(message == why)
        }
        #expect(
            try await loadError(
                retrying.replacingOccurrences(of: "    deadLetterTopic: orders.dlq\n", with: "")
            )
            .hasSuffix(
                "topics.orders.deadLetterTopic: is required when onFailure.then is retryLater (a message failing after its last delay goes there)"
            ))
    }
}
