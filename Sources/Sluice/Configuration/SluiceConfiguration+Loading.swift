import Configuration
import SluiceKafka
import SystemPackage
import Yams

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

extension SluiceConfiguration {
    /// Loads the configuration from a YAML file, with every key overridable from the environment:
    /// `kafka.bootstrap` ← `SLUICE_KAFKA_BOOTSTRAP`, `topics.orders.maxInFlight` ←
    /// `SLUICE_TOPICS_ORDERS_MAX_IN_FLIGHT` (camelCase words and anything but letters and digits become
    /// `_`). The environment wins over the file, the file over the defaults.
    ///
    /// Validated here: an unknown key, a value of the wrong type, a bad duration or enum value, or a
    /// missing required key throws a ``SluiceError`` naming the file, line and column (or the environment
    /// variable), the key path and the reason. That every topic has a handler is checked at ``SluiceHost/run()``.
    ///
    /// The keys are listed in `docs/configuration.md`.
    public static func load(
        file path: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> SluiceConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw SluiceError(
                code: .configuration,
                message: "\(path): cannot read the configuration file: \(error.localizedDescription)")
        }
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw SluiceError(code: .configuration, message: "\(path): the configuration file is empty")
            }
            root = node
        } catch let error as SluiceError {
            throw error
        } catch {
            throw SluiceError(code: .configuration, message: "\(path): not valid YAML: \(error)")
        }
        let layout = try ConfigurationLayout(root: root, file: path)
        let reader = ConfigReader(providers: [
            EnvironmentVariablesProvider(environmentVariables: environment).prefixKeys(with: ["sluice"]),
            try await FileProvider<YAMLSnapshot>(filePath: FilePath(path)),
        ])
        return try ConfigurationValues(reader: reader, layout: layout, environment: environment).configuration()
    }
}

/// The keys a configuration file may hold, and where each one is in the file.
struct ConfigurationLayout {
    /// `*` stands for any name (a topic, a librdkafka property).
    static let schema: [String: Set<String>] = [
        "": ["kafka", "topics", "host", "flags", "admin", "control", "metrics"],
        "metrics": ["perPartition"],
        "control": [
            "enabled", "topic", "loadTimeout", "createTopics", "replicationFactor", "hostKey", "hostKeyPrevious",
            "operatorPublicKey",
            "operatorPublicKeyPrevious", "operatorKey",
        ],
        "kafka": [
            "bootstrap", "group", "groupInstanceId", "sessionTimeout", "commitInterval", "properties",
            "producerProperties",
        ],
        "kafka.properties": ["*"],
        "kafka.producerProperties": ["*"],
        "topics": ["*"],
        "topics.*": [
            "ordering", "output", "processors", "batch", "maxInFlight", "onFailure", "deadLetterTopic",
            "handlerTimeout",
            "abandonTimeout", "maxAbandonedCalls", "breaker",
            "onCrash",
        ],
        "topics.*.onCrash": ["after", "then"],
        "topics.*.breaker": ["preset", "restartBackoff", "trip", "cooldown", "healthyAfter"],
        "topics.*.breaker.trip": ["crashes", "within"],
        "flags": ["pollInterval", "default", "file"],
        "admin": [
            "enabled", "listen", "token", "stateFile", "maxBodyBytes", "secureCookies", "publicReads", "publicMetrics",
        ],
        "topics.*.batch": ["size", "timeout"],
        "topics.*.onFailure": ["retries", "backoff", "then", "delays", "createTopics"],
        "host": [
            "revokeTimeout", "shutdownTimeout", "drainTimeout", "stallAfter", "lagRefreshInterval", "handlerThreads",
            "maxHandlerThreads", "blockedThreadAfter", "stateDirectory", "crashJournal", "memoryBudget", "workers",
        ],
    ]

    /// Keys that may hold either a single value or a mapping (`breaker: fuse`, `trip: never`).
    static let scalarOrMapping: Set<String> = ["topics.*.breaker", "topics.*.breaker.trip"]

    /// Keys that may hold a list of single values (`delays: [30s, 5m]`) as well as one value.
    static let lists: Set<String> = ["topics.*.onFailure.delays"]

    let file: String
    /// Where each key path is, as `line:column`.
    private(set) var positions: [[String]: Mark] = [:]
    /// The topic names in the file, in file order.
    private(set) var topics: [String] = []

    init(root: Node, file: String) throws {
        self.file = file
        try walk(root, path: [], schemaPath: "")
    }

    private mutating func walk(_ node: Node, path: [String], schemaPath: String) throws {
        guard let allowed = Self.schema[schemaPath] else { return }
        guard let mapping = node.mapping else {
            throw error(at: node.mark, path: path, "expected a mapping of keys")
        }
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else {
                throw error(at: keyNode.mark, path: path, "keys must be text")
            }
            let childPath = path + [key]
            let isWildcard = allowed.contains("*")
            guard isWildcard || allowed.contains(key) else {
                let known = allowed.sorted().joined(separator: ", ")
                throw error(at: keyNode.mark, path: childPath, "unknown key (known keys here: \(known))")
            }
            positions[childPath] = value.mark ?? keyNode.mark
            if schemaPath == "topics" { topics.append(key) }
            let childSchema = schemaPath.isEmpty ? key : schemaPath + "." + (isWildcard ? "*" : key)
            if Self.schema[childSchema] != nil {
                if value.scalar != nil, Self.scalarOrMapping.contains(childSchema) { continue }
                try walk(value, path: childPath, schemaPath: childSchema)
            } else if Self.lists.contains(childSchema), let items = value.sequence {
                if let item = items.first(where: { $0.scalar == nil }) {
                    throw error(at: item.mark, path: childPath, "expected a list of single values")
                }
            } else if value.scalar == nil {
                throw error(at: value.mark, path: childPath, "expected a single value, not a list or mapping")
            }
        }
    }

    func location(_ path: [String]) -> String {
        guard let mark = positions[path] else { return file }
        return "\(file):\(mark.line):\(mark.column)"
    }

    private func error(at mark: Mark?, path: [String], _ reason: String) -> SluiceError {
        let location = mark.map { "\(file):\($0.line):\($0.column)" } ?? file
        let key = path.isEmpty ? "(top level)" : path.joined(separator: ".")
        return SluiceError(code: .configuration, message: "\(location): \(key): \(reason)")
    }
}

/// Reads typed values through swift-configuration and names the source of a bad one.
private struct ConfigurationValues {
    let reader: ConfigReader
    let layout: ConfigurationLayout
    let environment: [String: String]

    func configuration() throws -> SluiceConfiguration {
        var kafka = SluiceConfiguration.Kafka(
            bootstrap: try required(["kafka", "bootstrap"]),
            group: try required(["kafka", "group"]))
        kafka.sessionTimeout = try duration(["kafka", "sessionTimeout"]) ?? kafka.sessionTimeout
        if let instance = try string(["kafka", "groupInstanceId"]) {
            // Kafka's rule for group.instance.id is its rule for topic names; "-w63" is added for worker slots.
            guard TopicName.problem(instance) == nil, instance.utf8.count <= TopicName.maximumLength - 4 else {
                throw problem(
                    ["kafka", "groupInstanceId"],
                    "must be 1 to \(TopicName.maximumLength - 4) letters, digits, '.', '_' or '-', got \(TopicName.quoted(instance))"
                )
            }
            kafka.groupInstanceId = instance
        }
        kafka.commitInterval =
            try duration(
                ["kafka", "commitInterval"], atLeast: .milliseconds(10),
                "must be at least 10ms (0 makes the consumer thread spin)")
            ?? kafka.commitInterval
        for property in layout.positionsOfProperties() {
            kafka.properties[property] = try string(["kafka", "properties", property])
        }
        for property in layout.positionsOfProperties("producerProperties") {
            kafka.producerProperties[property] = try string(["kafka", "producerProperties", property])
        }
        var topics: [String: TopicConfiguration] = [:]
        for topic in layout.topics {
            if let reason = TopicName.problem(topic) { throw problem(["topics", topic], reason) }
            topics[topic] = try topicConfiguration(topic)
        }
        for topic in layout.topics {
            guard let deadLetterTopic = topics[topic]?.deadLetterTopic, topics[deadLetterTopic] != nil else { continue }
            throw problem(["topics", topic, "deadLetterTopic"], SluiceConfiguration.deadLetterLoop(deadLetterTopic))
        }
        var configuration = SluiceConfiguration(kafka: kafka, topics: topics)
        configuration.sourceFile = layout.file
        configuration.revokeTimeout = try duration(["host", "revokeTimeout"]) ?? configuration.revokeTimeout
        configuration.shutdownTimeout = try duration(["host", "shutdownTimeout"]) ?? configuration.shutdownTimeout
        configuration.drainTimeout = try duration(["host", "drainTimeout"]) ?? configuration.drainTimeout
        configuration.stallAfter =
            try duration(["host", "stallAfter"], atLeast: .seconds(1), "must be at least 1s")
            ?? configuration.stallAfter
        configuration.lagRefreshInterval =
            try duration(
                ["host", "lagRefreshInterval"], atLeast: .milliseconds(100),
                "must be at least 100ms (each refresh queries the brokers)")
            ?? configuration.lagRefreshInterval
        if let threads = try integer(["host", "handlerThreads"]) {
            guard (1...1024).contains(threads) else {
                throw problem(["host", "handlerThreads"], "must be 1...1024, got \(threads)")
            }
            configuration.handlerThreads = threads
        }
        if let threads = try integer(["host", "maxHandlerThreads"]) {
            guard (configuration.handlerThreads...4096).contains(threads) else {
                throw problem(
                    ["host", "maxHandlerThreads"],
                    "must be at least host.handlerThreads (\(configuration.handlerThreads)) and at most 4096, got \(threads)"
                )
            }
            configuration.maxHandlerThreads = threads
        }
        configuration.maxHandlerThreads = max(configuration.maxHandlerThreads, configuration.handlerThreads)
        configuration.blockedThreadAfter =
            try duration(
                ["host", "blockedThreadAfter"], atLeast: .milliseconds(100),
                "must be at least 100ms (shorter flags ordinary work as blocking)")
            ?? configuration.blockedThreadAfter
        if let directory = try string(["host", "stateDirectory"]) {
            guard !directory.trimmingWhitespace().isEmpty else {
                throw problem(["host", "stateDirectory"], "is empty")
            }
            configuration.stateDirectory = directory
        }
        configuration.crashJournal = try onOff(["host", "crashJournal"]) ?? configuration.crashJournal
        if let workers = try integer(["host", "workers"]) {
            guard (0...SluiceConfiguration.maximumWorkers).contains(workers) else {
                throw problem(["host", "workers"], "must be 0...\(SluiceConfiguration.maximumWorkers), got \(workers)")
            }
            configuration.workers = workers
        }
        if let text = try string(["host", "memoryBudget"]) {
            if text.trimmingWhitespace().lowercased() == "off" {
                configuration.memoryBudget = nil
            } else {
                guard let bytes = ByteSize.parse(text) else {
                    throw problem(
                        ["host", "memoryBudget"],
                        "expected a size with a unit (KiB, MiB, GiB, or KB, MB, GB), e.g. 256MiB, or off, got '\(text)'"
                    )
                }
                guard bytes >= 16 << 20 else {
                    throw problem(["host", "memoryBudget"], "must be at least 16MiB, got \(text.trimmingWhitespace())")
                }
                configuration.memoryBudget = bytes
            }
        }
        configuration.perPartitionMetrics = try onOff(["metrics", "perPartition"]) ?? configuration.perPartitionMetrics
        configuration.flags.pollInterval =
            try duration(["flags", "pollInterval"], atLeast: .milliseconds(10), "must be at least 10ms")
            ?? configuration.flags.pollInterval
        configuration.flags.defaultEnabled = try onOff(["flags", "default"]) ?? configuration.flags.defaultEnabled
        configuration.flags.file = try string(["flags", "file"])
        configuration.control.enabled = try onOff(["control", "enabled"]) ?? configuration.control.enabled
        if let topic = try string(["control", "topic"]) {
            if let reason = TopicName.problem(topic) { throw problem(["control", "topic"], reason) }
            configuration.control.topic = topic
        }
        configuration.control.loadTimeout =
            try duration(["control", "loadTimeout"], atLeast: .seconds(1), "must be at least 1s")
            ?? configuration.control.loadTimeout
        configuration.control.createTopics =
            try onOff(["control", "createTopics"]) ?? configuration.control.createTopics
        if let factor = try integer(["control", "replicationFactor"]) {
            guard factor == -1 || (1...32767).contains(factor) else {
                throw problem(
                    ["control", "replicationFactor"], "must be -1 (the brokers' default) or at least 1, got \(factor)")
            }
            configuration.control.replicationFactor = factor
        }
        configuration.control.hostKey = try string(["control", "hostKey"], isSecret: true)
        configuration.control.hostKeyPrevious = try string(["control", "hostKeyPrevious"], isSecret: true)
        configuration.control.operatorPublicKey = try string(["control", "operatorPublicKey"])
        configuration.control.operatorPublicKeyPrevious = try string(["control", "operatorPublicKeyPrevious"])
        configuration.control.operatorKey = try string(["control", "operatorKey"], isSecret: true)
        do {
            _ = try configuration.control.keys()
        } catch {
            throw SluiceError(code: .configuration, message: "\(layout.file): \(error.message)")
        }
        configuration.admin.enabled = try onOff(["admin", "enabled"]) ?? configuration.admin.enabled
        configuration.admin.listen = try string(["admin", "listen"]) ?? configuration.admin.listen
        configuration.admin.token = try string(["admin", "token"], isSecret: true)
        if let token = configuration.admin.token, token.trimmingWhitespace().isEmpty {
            throw problem(
                ["admin", "token"],
                "is empty, which would leave changes open to anyone; remove the key to run without a token")
        }
        configuration.admin.stateFile = try string(["admin", "stateFile"]) ?? configuration.admin.stateFile
        configuration.admin.maxBodyBytes = try integer(["admin", "maxBodyBytes"]) ?? configuration.admin.maxBodyBytes
        configuration.admin.secureCookies = try onOff(["admin", "secureCookies"]) ?? configuration.admin.secureCookies
        configuration.admin.publicReads = try onOff(["admin", "publicReads"]) ?? configuration.admin.publicReads
        configuration.admin.publicMetrics = try onOff(["admin", "publicMetrics"]) ?? configuration.admin.publicMetrics
        let listenParts = configuration.admin.listen.split(separator: ":")
        if listenParts.count != 2 || Int(listenParts[1]).map({ !(0...65535).contains($0) }) ?? true {
            throw problem(
                ["admin", "listen"], "expected HOST:PORT, e.g. 127.0.0.1:8080, got '\(configuration.admin.listen)'")
        }
        for topic in layout.topics {
            do {
                try topics[topic]!.validate(topic: topic)
            } catch let error as SluiceError {
                throw SluiceError(code: .configuration, message: "\(layout.file): \(error.message)")
            }
        }
        return configuration
    }

    private func topicConfiguration(_ topic: String) throws -> TopicConfiguration {
        let base = ["topics", topic]
        var settings = TopicConfiguration()
        settings.ordering = try choice(base + ["ordering"]) ?? settings.ordering
        settings.output = try choice(base + ["output"]) ?? settings.output
        settings.processors = try integer(base + ["processors"]) ?? settings.processors
        if let maxInFlight = try integer(base + ["maxInFlight"]) { settings.maxInFlight = maxInFlight }
        settings.handlerTimeout = try duration(base + ["handlerTimeout"]) ?? settings.handlerTimeout
        settings.abandonTimeout = try duration(base + ["abandonTimeout"]) ?? settings.abandonTimeout
        settings.maxAbandonedCalls = try integer(base + ["maxAbandonedCalls"]) ?? settings.maxAbandonedCalls
        settings.deadLetterTopic = try string(base + ["deadLetterTopic"])
        let batchSize = try integer(base + ["batch", "size"])
        let batchTimeout = try duration(base + ["batch", "timeout"])
        if batchSize != nil || batchTimeout != nil {
            guard let batchSize, let batchTimeout else {
                throw problem(base + ["batch"], "needs both size and timeout, e.g. {size: 100, timeout: 200ms}")
            }
            settings.batch = .init(size: batchSize, timeout: batchTimeout)
        }
        settings.onFailure.retries = try integer(base + ["onFailure", "retries"]) ?? settings.onFailure.retries
        settings.onFailure.then = try choice(base + ["onFailure", "then"]) ?? settings.onFailure.then
        settings.onFailure.delays = try durations(base + ["onFailure", "delays"]) ?? settings.onFailure.delays
        settings.onFailure.createTopics =
            try onOff(base + ["onFailure", "createTopics"]) ?? settings.onFailure.createTopics
        settings.onCrash.after = try integer(base + ["onCrash", "after"]) ?? settings.onCrash.after
        settings.onCrash.then = try choice(base + ["onCrash", "then"]) ?? settings.onCrash.then
        settings.breaker = try breaker(base + ["breaker"])
        if let text = try string(base + ["onFailure", "backoff"]) {
            let parts = text.components(separatedBy: "..")
            guard parts.count == 2, let initial = Duration.parse(parts[0]), let maximum = Duration.parse(parts[1])
            else {
                throw problem(base + ["onFailure", "backoff"], "expected a range like 100ms..5s, got '\(text)'")
            }
            settings.onFailure.backoff = .init(initial: initial, maximum: maximum)
        }
        return settings
    }

    private func breaker(_ path: [String]) throws -> BreakerPolicy {
        // `breaker: fuse`, or fields over a preset (default `standard`).
        let presetName = try string(path) ?? string(path + ["preset"]) ?? "standard"
        guard var policy = BreakerPolicy.presets[presetName] else {
            throw problem(
                path,
                "unknown breaker preset '\(presetName)'; known: \(BreakerPolicy.presets.keys.sorted().joined(separator: ", "))"
            )
        }
        if let text = try string(path + ["restartBackoff"]) {
            let parts = text.components(separatedBy: "..")
            guard parts.count == 2, let initial = Duration.parse(parts[0]), let maximum = Duration.parse(parts[1])
            else {
                throw problem(path + ["restartBackoff"], "expected a range like 1s..5m, got '\(text)'")
            }
            policy.restartBackoff = .init(initial: initial, maximum: maximum)
        }
        if try string(path + ["trip"]) == "never" {
            policy.trip = nil
        } else if let crashes = try integer(path + ["trip", "crashes"]) {
            policy.trip = .init(crashes: crashes, within: try duration(path + ["trip", "within"]))
        } else if try string(path + ["trip", "within"]) != nil {
            throw problem(
                path + ["trip"], "needs crashes (and optionally within), e.g. {crashes: 5, within: 10m}, or never")
        }
        if let text = try string(path + ["cooldown"]) {
            if text.trimmingWhitespace() == "never" {
                policy.cooldown = nil
            } else {
                policy.cooldown = try duration(
                    path + ["cooldown"], atLeast: .milliseconds(1),
                    "must be positive or never (0 probes at once: a hot crash loop)")
            }
        }
        policy.healthyAfter = try duration(path + ["healthyAfter"]) ?? policy.healthyAfter
        return policy
    }

    private func onOff(_ path: [String]) throws -> Bool? {
        guard let text = try string(path) else { return nil }
        switch text.trimmingWhitespace().lowercased() {
        case "on", "true": return true
        case "off", "false": return false
        default: throw problem(path, "expected on or off, got '\(text)'")
        }
    }

    // MARK: Typed reads

    /// A text value. `${NAME}` as the whole value stands for the environment variable NAME.
    private func string(_ path: [String], isSecret: Bool = false) throws -> String? {
        guard let value = reader.string(forKey: ConfigKey(path), isSecret: isSecret) else { return nil }
        let trimmed = value.trimmingWhitespace()
        guard trimmed.hasPrefix("${"), trimmed.hasSuffix("}") else { return value }
        let name = String(trimmed.dropFirst(2).dropLast())
        guard let substituted = environment[name] else {
            throw problem(path, "refers to the environment variable \(name), which is not set")
        }
        return substituted
    }

    private func required(_ path: [String]) throws -> String {
        guard let value = try string(path), !value.isEmpty else {
            throw SluiceError(
                code: .configuration,
                message: "\(layout.file): \(path.joined(separator: ".")): required (or set \(environmentName(path)))")
        }
        return value
    }

    private func integer(_ path: [String]) throws -> Int? {
        guard let text = try string(path) else { return nil }
        guard let value = Int(text.trimmingWhitespace()) else {
            throw problem(path, "expected a whole number, got '\(text)'")
        }
        return value
    }

    private func duration(_ path: [String]) throws -> Duration? {
        guard let text = try string(path) else { return nil }
        guard let value = Duration.parse(text) else {
            throw problem(path, "expected a duration with a unit (ms, s, m, h), e.g. 200ms or 1.5s, got '\(text)'")
        }
        return value
    }

    /// A list of durations: a list in the file (`[30s, 5m]`), or one text of them separated by commas (the
    /// environment's `30s,5m`).
    private func durations(_ path: [String]) throws -> [Duration]? {
        let texts: [String]
        if let list = reader.stringArray(forKey: ConfigKey(path)) {
            texts = list
        } else if let text = try string(path) {
            texts = text.split(separator: ",").map(String.init)
        } else {
            return nil
        }
        return try texts.map { text in
            guard let value = Duration.parse(text) else {
                throw problem(path, "expected durations with a unit (ms, s, m, h), e.g. [30s, 5m], got '\(text)'")
            }
            return value
        }
    }

    /// A duration of at least `minimum`; a smaller one is refused with `refusal` and the value as written.
    private func duration(_ path: [String], atLeast minimum: Duration, _ refusal: String) throws -> Duration? {
        guard let value = try duration(path) else { return nil }
        guard value >= minimum else {
            let written = (try string(path))?.trimmingWhitespace() ?? "\(value)"
            throw problem(path, "\(refusal), got \(written)")
        }
        return value
    }

    private func choice<Value: RawRepresentable & CaseIterable>(_ path: [String]) throws -> Value?
    where Value.RawValue == String {
        guard let text = try string(path) else { return nil }
        guard let value = Value(rawValue: text.trimmingWhitespace()) else {
            let options = Value.allCases.map(\.rawValue).joined(separator: ", ")
            throw problem(path, "expected one of \(options), got '\(text)'")
        }
        return value
    }

    /// An error naming where the value came from: the environment variable, or the file position.
    private func problem(_ path: [String], _ reason: String) -> SluiceError {
        let variable = environmentName(path)
        let source = environment[variable] != nil ? "environment variable \(variable)" : layout.location(path)
        return SluiceError(code: .configuration, message: "\(source): \(path.joined(separator: ".")): \(reason)")
    }

    private func environmentName(_ path: [String]) -> String {
        (["sluice"] + path).map { component -> String in
            var words = ""
            var previous: Character?
            for character in component {
                if let previous, previous.isLowercase, character.isUppercase { words.append("_") }
                words.append(character)
                previous = character
            }
            return String(words.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
        }.joined(separator: "_")
    }
}

extension ConfigurationLayout {
    /// The librdkafka property names under `kafka.properties`.
    func positionsOfProperties(_ section: String = "properties") -> [String] {
        positions.keys.filter { $0.count == 3 && $0[0] == "kafka" && $0[1] == section }.map { $0[2] }.sorted()
    }
}
