import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Options every admin command takes.
struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: "The host's admin API, e.g. http://127.0.0.1:8080 (environment SLUICE_ADMIN_URL).")
    var admin: String = ProcessInfo.processInfo.environment["SLUICE_ADMIN_URL"] ?? "http://127.0.0.1:8080"

    @Option(name: .long, help: "Bearer token for changes (environment SLUICE_ADMIN_TOKEN).")
    var token: String?

    var resolvedToken: String? { token ?? ProcessInfo.processInfo.environment["SLUICE_ADMIN_TOKEN"] }
}

/// Calls a host's admin API and turns failures into clear messages.
struct AdminClient {
    let options: AdminOptions

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Sends a request; returns the decoded JSON object of a 2xx answer, throws a ``Failure`` naming the
    /// host's error otherwise.
    func call(_ method: String, _ path: String, body: [String: Any]? = nil) async throws -> [String: Any] {
        guard let url = URL(string: options.admin.trimmingCharacters(in: CharacterSet(charactersIn: "/")) + path) else {
            throw Failure(description: "--admin '\(options.admin)' is not a URL")
        }
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.timeoutInterval = 10
        request.setValue("sluice-cli", forHTTPHeaderField: "User-Agent")
        let user = ProcessInfo.processInfo.environment["USER"] ?? "unknown"
        request.setValue("\(user)@\(ProcessInfo.processInfo.hostName) via sluice CLI", forHTTPHeaderField: "X-Sluice-Caller")
        if let token = options.resolvedToken { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let body {
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await URLSession.shared.data(for: request)
        } catch {
            throw Failure(description: "cannot reach the Sluice admin API at \(options.admin): \(error.localizedDescription)")
        }
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
        guard (200..<300).contains(status) else {
            let message = object["error"] as? String ?? String(decoding: data, as: UTF8.self)
            throw Failure(description: "the host refused (\(status)): \(message)")
        }
        return object
    }
}

/// Where a flag change goes instead of one host's admin API: the group's control topic, which every host
/// of the group reads.
struct ControlOptions: ParsableArguments {
    @Option(name: .long, help: "Write to the group's control topic through these brokers instead of one host's admin API.")
    var bootstrap: String?

    @Option(name: .long, help: "The consumer group whose control topic to write (with --bootstrap).")
    var group: String?

    @Option(name: .long, help: "The control topic (default __sluice-control-GROUP).")
    var controlTopic: String?

    @Option(name: .long, help: "How long to wait for the group's hosts to apply the change (seconds).")
    var wait: Double = 10

    @Flag(name: .long, help: "With --bootstrap: write without waiting for any host to apply it (ahead of a deploy); otherwise a change no live host applied exits 1.")
    var noWait = false

    @Flag(name: .long, help: "With --bootstrap: list the shards of the group the change would touch (from the hosts' status); write nothing.")
    var dryRun = false

    @OptionGroup var connection: KafkaConnectionOptions

    func validate() throws {
        if bootstrap != nil, group == nil, controlTopic == nil {
            throw ValidationError("--bootstrap needs --group (or --control-topic)")
        }
    }

    /// The keys of a signed group, from the environment: SLUICE_CONTROL_OPERATOR_KEY signs what this writes;
    /// SLUICE_CONTROL_HOST_KEY and SLUICE_CONTROL_OPERATOR_PUBLIC_KEY verify what it reads.
    func keys() throws -> ControlKeys? {
        do {
            return try ControlKeys.fromEnvironment(ProcessInfo.processInfo.environment)
        } catch {
            throw AdminClient.Failure(description: error.message)
        }
    }

    /// How to reach the brokers: ``KafkaConnectionOptions/librdkafkaProperties()``.
    func librdkafkaProperties() throws -> [String: String] { try connection.librdkafkaProperties() }

    /// Writes a flag record; prints where it went.
    func write(key: String, enabled: Bool?, reason: String?, rate: Double? = nil) async throws {
        guard let bootstrap else { return }
        let flagKey: FlagKey
        do {
            flagKey = try FlagKey(parsing: key)
        } catch {
            throw AdminClient.Failure(description: "\((error as? SluiceError)?.message ?? "\(error)")")
        }
        let topic = controlTopic ?? ControlPlaneFlagSource.defaultTopic(group: group!)
        var logger = Logger(label: "sluice.cli")
        logger.logLevel = .error
        if dryRun {
            try await preview(flagKey, enabled: enabled, rate: rate, topic: topic, bootstrap: bootstrap, logger: logger)
            return
        }
        let user = ProcessInfo.processInfo.environment["USER"] ?? "unknown"
        // The flag's value before, for the audit entry.
        // The record is written first and the topic read alongside: the hosts apply the change while this
        // process still reads what came before it (for the audit's "before" and the acknowledgements).
        // Written ahead of any host (--no-wait before a deploy), the topics are created as hosts create them: a
        // broker's auto-creation would make the control topic with its defaults (not compacted).
        for newTopic in ControlPlaneWriter.topics(forControl: topic) {
            do {
                _ = try await KafkaTopicAdmin.ensure(newTopic, bootstrapServers: bootstrap, properties: try librdkafkaProperties(), timeout: .seconds(max(wait, 30)))
            } catch {
                throw AdminClient.Failure(description: "control topic '\(topic)': topic '\(newTopic.name)' is missing at \(bootstrap) and could not be created: \(error)")
            }
        }
        let records = RecordTable(watching: flagKey)
        let loading = Task { try await open(topic: topic, bootstrap: bootstrap, logger: logger, into: records) }
        do {
            let writer = try ControlPlaneWriter(bootstrapServers: bootstrap, topic: topic, properties: try librdkafkaProperties(), keys: keys(), logger: logger)
            let who = "\(user)@\(ProcessInfo.processInfo.hostName) via sluice CLI"
            let written = ContinuousClock.now
            let offset = try await writer.setFlag(flagKey, enabled: enabled, reason: reason, who: who, rate: rate, audited: false)
            let (_, reader) = try await loading.value
            defer { Task { await reader.close() } }
            let before = records.watchedFlag(before: offset).map { FlagSetting(enabled: $0.enabled, source: "control", reason: $0.reason, rate: $0.rate) }
            await writer.auditFlag(flagKey, enabled: enabled, rate: rate, reason: reason, who: who, before: before, offset: offset)
            await writer.close()
            try await report(
                "\(key): \(rate.map(ControlRecord.describeRate) ?? enabled.map { $0 ? "on" : "off" } ?? "unset") (control topic \(topic), offset \(offset))",
                offset: offset, in: records, since: written)
        } catch let failure as AdminClient.Failure {
            throw failure
        } catch {
            throw AdminClient.Failure(description: "cannot write to control topic '\(topic)' at \(bootstrap): \(error)")
        }
    }

    /// The control topic's state, read to its end.
    private func read(topic: String, bootstrap: String, logger: Logger) async throws -> RecordTable {
        let (records, reader) = try await open(topic: topic, bootstrap: bootstrap, logger: logger)
        await reader.close()
        return records
    }

    /// The control topic read to its end, and its reader left tailing it: a write then waits for the hosts'
    /// acknowledgements in the same table, instead of reading the whole topic a second time. Loading may
    /// take up to 30 s (or `--wait`, if longer): it is the topic's size, not the hosts, that it waits for.
    private func open(topic: String, bootstrap: String, logger: Logger, into records: RecordTable = RecordTable()) async throws
        -> (RecordTable, ControlTopicReader)
    {
        if let keys = try keys(), keys.verifies { records.verify(with: keys, topic: topic) }
        do {
            let reader = try ControlTopicReader(bootstrapServers: bootstrap, topic: topic, properties: try librdkafkaProperties(), logger: logger) { record in
                records.apply(record)
            }
            do {
                try await reader.load(timeout: .seconds(max(wait, 30)))
            } catch {
                await reader.close()
                throw error
            }
            return (records, reader)
        } catch {
            throw AdminClient.Failure(description: "cannot read control topic '\(topic)' at \(bootstrap): \(error)")
        }
    }

    /// Lists the shards of live hosts a flag change would touch, and how.
    private func preview(_ key: FlagKey, enabled: Bool?, rate: Double?, topic: String, bootstrap: String, logger: Logger) async throws {
        let records = try await read(topic: topic, bootstrap: bootstrap, logger: logger)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        var rows = [["HOST", "SHARD", "STATE", "WOULD"]]
        var changes = 0
        var hosts = Set<String>()
        for (identity, status) in records.hosts.sorted(by: { $0.key < $1.key }) where status.isLive(now: now, window: 15_000) {
            for (shard, state) in status.shards.sorted(by: { $0.key < $1.key }) {
                let parts = shard.split(separator: "/")
                guard parts.count == 2, let partition = Int32(parts[1]), key.covers(TopicPartition(String(parts[0]), partition)) else { continue }
                let (change, changing) = ControlRecord.flagEffect(on: state, enabled: enabled, rate: rate)
                if changing {
                    changes += 1
                    hosts.insert(identity)
                }
                rows.append([identity, shard, state, change])
            }
        }
        print(Table.render(rows))
        print("\(key): \(rate.map(ControlRecord.describeRate) ?? enabled.map { $0 ? "on" : "off" } ?? "unset") would change \(changes) shard(s) on \(hosts.count) host(s); nothing was written (--dry-run)")
    }

    /// Releases a quarantined message through the control topic: `skip` commits it without a handler call,
    /// `deadLetter` writes it to the dead-letter topic, `retry` tries it again. Refused when the topic holds
    /// no quarantine there, or one at another offset.
    func releaseQuarantine(_ topicPartition: TopicPartition, as release: Quarantine.Release, offset: Int64?, reason: String?) async throws {
        guard let bootstrap else { return }
        let topic = controlTopic ?? ControlPlaneFlagSource.defaultTopic(group: group!)
        var logger = Logger(label: "sluice.cli")
        logger.logLevel = .error
        let (records, reader) = try await open(topic: topic, bootstrap: bootstrap, logger: logger)
        defer { Task { await reader.close() } }
        guard let quarantine = records.quarantines[topicPartition] else {
            throw AdminClient.Failure(description: "no quarantined message on \(topicPartition) in control topic '\(topic)'")
        }
        let user = ProcessInfo.processInfo.environment["USER"] ?? "unknown"
        let released: Quarantine?
        do {
            released = try quarantine.released(
                release, offset: offset, who: "\(user)@\(ProcessInfo.processInfo.hostName) via sluice CLI", reason: reason, of: topicPartition)
        } catch {
            throw AdminClient.Failure(description: error.message)
        }
        do {
            let writer = try ControlPlaneWriter(bootstrapServers: bootstrap, topic: topic, properties: try librdkafkaProperties(), keys: keys(), logger: logger)
            let started = ContinuousClock.now
            let written = try await writer.setQuarantine(topicPartition, released, before: quarantine)
            await writer.close()
            try await report(
                "\(topicPartition): offset \(quarantine.offset) \(["skip": "skipped", "deadLetter": "released to the dead-letter topic"][release.rawValue] ?? "released, tried again") (control topic \(topic), offset \(written))",
                offset: written, in: records, since: started)
        } catch let failure as AdminClient.Failure {
            throw failure
        } catch {
            throw AdminClient.Failure(description: "cannot write to control topic '\(topic)' at \(bootstrap): \(error)")
        }
    }

    /// Resets a shard for the group: its quarantine, if any, is released (the message is tried again), and the
    /// host that owns it starts it now with a clean history (a `command/ID` record).
    func reset(_ topicPartition: TopicPartition) async throws {
        guard let bootstrap else { return }
        let topic = controlTopic ?? ControlPlaneFlagSource.defaultTopic(group: group!)
        var logger = Logger(label: "sluice.cli")
        logger.logLevel = .error
        let (records, reader) = try await open(topic: topic, bootstrap: bootstrap, logger: logger)
        defer { Task { await reader.close() } }
        if records.quarantines[topicPartition] != nil {
            try await releaseQuarantine(topicPartition, as: .retry, offset: nil, reason: nil)
        }
        let user = ProcessInfo.processInfo.environment["USER"] ?? "unknown"
        do {
            let writer = try ControlPlaneWriter(bootstrapServers: bootstrap, topic: topic, properties: try librdkafkaProperties(), keys: keys(), logger: logger)
            let started = ContinuousClock.now
            let offset = try await writer.send(
                ControlCommand(action: .reset, topicPartition: topicPartition, who: "\(user)@\(ProcessInfo.processInfo.hostName) via sluice CLI"))
            await writer.close()
            try await report("\(topicPartition): reset sent (control topic \(topic), offset \(offset))", offset: offset, in: records, since: started)
        } catch let failure as AdminClient.Failure {
            throw failure
        } catch {
            throw AdminClient.Failure(description: "cannot write to control topic '\(topic)' at \(bootstrap): \(error)")
        }
    }

    /// Prints every shard of the group as its live hosts last reported it (host records from the last 15 s),
    /// with the group's trips and quarantines.
    func listShards() async throws {
        guard let bootstrap else { return }
        let topic = controlTopic ?? ControlPlaneFlagSource.defaultTopic(group: group!)
        var logger = Logger(label: "sluice.cli")
        logger.logLevel = .error
        let records = try await read(topic: topic, bootstrap: bootstrap, logger: logger)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        var owned: [(shard: String, host: String, state: String, detail: ControlHostStatus.Shard?)] = []
        for (identity, status) in records.hosts where status.isLive(now: now, window: 15_000) {
            for (shard, state) in status.shards { owned.append((shard, identity, state, status.details[shard])) }
        }
        var rows = [["SHARD", "STATE", "HOST", "PAUSED", "LAG", "NOTE"]]
        for entry in owned.sorted(by: { ($0.shard, $0.host) < ($1.shard, $1.host) }) {
            var note = ""
            if let partition = try? ShardsCommand.parse(entry.shard) {
                if let quarantine = records.quarantines[partition] { note = "quarantine: \(quarantine.state.rawValue) at offset \(quarantine.offset)" }
                else if let trip = records.trips[partition] { note = "tripped: \(trip.reason.prefix(60))" }
            }
            rows.append([
                entry.shard, entry.state, entry.host, entry.detail.map { $0.pauseReasons.joined(separator: ",") } ?? "",
                entry.detail?.lag.map(String.init) ?? "-", note,
            ])
        }
        print(Table.render(rows))
        let hosts = Set(owned.map(\.host)).count
        print("\(owned.count) shard(s) on \(hosts) live host(s)")
    }

    /// Prints the control topic's flags and the group's hosts, read to the topic's end.
    func list() async throws {
        guard let bootstrap else { return }
        let topic = controlTopic ?? ControlPlaneFlagSource.defaultTopic(group: group!)
        var logger = Logger(label: "sluice.cli")
        logger.logLevel = .error
        let records = try await read(topic: topic, bootstrap: bootstrap, logger: logger)
        var rows = [["KEY", "VALUE", "REASON", "WHO"]]
        for (key, flag) in records.flags.sorted(by: { $0.key < $1.key }) {
            rows.append([key.description, flag.rate.map(ControlRecord.describeRate) ?? (flag.enabled ? "on" : "off"), flag.reason ?? "", flag.who ?? ""])
        }
        print(Table.render(rows))
        for (topicPartition, trip) in records.trips.sorted(by: { $0.key < $1.key }) {
            print("tripped: \(topicPartition) at offset \(trip.offset.map(String.init) ?? "-"): \(trip.reason)")
        }
        for (topicPartition, quarantine) in records.quarantines.sorted(by: { $0.key < $1.key }) {
            print("quarantine: \(topicPartition) \(quarantine.state.rawValue): \(quarantine.summary)")
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        var hostRows = [["HOST", "APPLIED", "SHARDS", "LAST SEEN"]]
        for (identity, status) in records.hosts.sorted(by: { $0.key < $1.key }) {
            hostRows.append([identity, "\(status.applied)", "\(status.shards.count)", "\(status.ageSeconds(now: now)) s ago"])
        }
        print(Table.render(hostRows))
        if records.bad > 0 { print("\(records.bad) control record(s) could not be read") }
    }

    /// Prints what was written and which hosts applied it (waiting up to `--wait`). A change no live host applied
    /// is a failure: an operator must not read "done" when no host of the group will act on it (no host is up,
    /// or the group's hosts run without `control.enabled`). `--no-wait` writes ahead of a deploy.
    private func report(_ written: String, offset: Int64, in records: RecordTable, since start: ContinuousClock.Instant) async throws {
        if noWait {
            print("\(written); not waiting for hosts (--no-wait)")
            return
        }
        let (applied, live, missing) = try await acknowledgements(of: offset, in: records)
        let took = Int(((ContinuousClock.now - start) / .milliseconds(1)).rounded())
        var line = "\(written); \(applied)/\(live) hosts applied"
        line += missing.isEmpty ? " in \(took) ms" : "; not yet: \(missing.sorted().joined(separator: ", "))"
        print(line)
        if applied == 0 {
            throw AdminClient.Failure(
                description: live == 0
                    ? "no live host of the group reads its control topic (none wrote its status in the last 15 s): is the group running, with control.enabled? The record stays and applies when a host starts; --no-wait writes without asking"
                    : "none of the group's \(live) live hosts applied it within \(wait) s")
        }
    }

    /// Waits (up to `--wait`) until every live host of the group (one that wrote its status in the last
    /// 15 s) says it applied the record at `offset`; returns how many did, of how many, and which did not.
    private func acknowledgements(of offset: Int64, in records: RecordTable) async throws -> (applied: Int, live: Int, missing: [String]) {
        let deadline = ContinuousClock.now + .milliseconds(Int(wait * 1000))
        while true {
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let live = records.hosts.filter { $0.value.isLive(now: now, window: 15_000) }
            let missing = live.filter { $0.value.applied <= offset }.map(\.key)
            if missing.isEmpty || ContinuousClock.now >= deadline { return (live.count - missing.count, live.count, missing) }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// The control topic's state as the CLI reads it.
private final class RecordTable: Sendable {
    struct Flag: Sendable {
        var enabled: Bool
        var reason: String?
        var who: String?
        var rate: Double?
    }

    private let state = Mutex<
        (flags: [FlagKey: Flag], trips: [TopicPartition: ControlRecord.Trip], hosts: [String: ControlHostStatus],
            quarantines: [TopicPartition: Quarantine], bad: Int, history: [(offset: Int64, flag: Flag?)])
    >(([:], [:], [:], [:], 0, []))
    /// A flag whose every value is kept with its offset (a write's "before", read after the write).
    private let watched: FlagKey?

    /// With keys, a record is applied only when its signature verifies (as on the hosts).
    private let verifier = Mutex<(keys: ControlKeys, topic: String)?>(nil)

    init(watching key: FlagKey? = nil) { watched = key }

    func verify(with keys: ControlKeys, topic: String) { verifier.withLock { $0 = (keys, topic) } }

    /// The watched flag's value before the record at `offset`.
    func watchedFlag(before offset: Int64) -> Flag? {
        state.withLock { state in state.history.last { $0.offset < offset }?.flag }
    }

    func apply(_ record: ControlTopicReader.Record) {
        state.withLock { state in
            let parsed: ControlRecord?
            do {
                if let (keys, topic) = verifier.withLock({ $0 }), ControlSigner.allowed(key: record.key, value: record.value) != nil {
                    _ = try keys.verify(topic: topic, key: record.key, value: record.value, headers: record.headers, offset: record.offset)
                }
                parsed = try ControlRecord.parse(key: record.key, value: record.value, offset: record.offset)
            } catch {
                state.bad += 1
                return
            }
            switch parsed {
            case .flag(let key, let enabled, let reason, let who, let rate)?:
                state.flags[key] = enabled.map { Flag(enabled: $0, reason: reason, who: who, rate: rate) }
                if key == watched { state.history.append((record.offset, state.flags[key])) }
            case .trip(let topicPartition, let trip)?: state.trips[topicPartition] = trip
            case .host(let identity, let status)?: state.hosts[identity] = status
            case .quarantine(let topicPartition, let quarantine)?: state.quarantines[topicPartition] = quarantine
            case .command?, nil: break
            }
        }
    }

    var flags: [FlagKey: Flag] { state.withLock { $0.flags } }
    var trips: [TopicPartition: ControlRecord.Trip] { state.withLock { $0.trips } }
    var hosts: [String: ControlHostStatus] { state.withLock { $0.hosts } }
    var quarantines: [TopicPartition: Quarantine] { state.withLock { $0.quarantines } }
    var bad: Int { state.withLock { $0.bad } }
}

/// Runs an admin call and exits non-zero with the message on failure.
func runAdmin(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let failure as AdminClient.Failure {
        FileHandle.standardError.write(Data("sluice: \(failure.description)\n".utf8))
        throw ExitCode(1)
    }
}

struct FlagsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flags",
        abstract: "List, set and unset a running host's runtime flags.",
        subcommands: [List.self, Set.self, Unset.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the flags in force and their sources.")
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions

        func run() async throws {
            try await runAdmin {
                if control.bootstrap != nil {
                    try await control.list()
                    return
                }
                let answer = try await AdminClient(options: options).call("GET", "/v1/flags")
                let flags = answer["flags"] as? [[String: Any]] ?? []
                var rows = [["KEY", "VALUE", "SOURCE", "REASON"]]
                for flag in flags {
                    rows.append([
                        flag["key"] as? String ?? "",
                        (flag["rate"] as? Double).map(ControlRecord.describeRate) ?? ((flag["enabled"] as? Bool ?? true) ? "on" : "off"),
                        flag["source"] as? String ?? "", flag["reason"] as? String ?? "",
                    ])
                }
                print(Table.render(rows))
                print("default: \(answer["default"] as? String ?? "on")")
                for (source, details) in (answer["sources"] as? [String: Any] ?? [:]).sorted(by: { $0.key < $1.key }) {
                    if let error = (details as? [String: Any])?["lastError"] as? String { print("source \(source) failing: \(error)") }
                }
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set an operator flag: KEY on|off (KEY is *, TOPIC or TOPIC/PARTITION).")
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions
        @Argument(help: "*, TOPIC or TOPIC/PARTITION") var key: String
        @Argument(help: "on or off") var value: String
        @Option(name: .long, help: "Why (logged and shown by `flags list`).") var reason: String?

        func validate() throws {
            let rate = ControlRecord.parseRate(value)
            guard ["on", "off"].contains(value) || rate != nil else {
                throw ValidationError("the value must be on, off or a rate such as 200/s, got '\(value)'")
            }
        }

        func run() async throws {
            try await runAdmin {
                if control.bootstrap != nil {
                    try await control.write(key: key, enabled: value != "off", reason: reason, rate: ControlRecord.parseRate(value))
                    return
                }
                var body: [String: Any] = ControlRecord.parseRate(value) != nil ? ["rate": value] : ["enabled": value == "on"]
                if let reason { body["reason"] = reason }
                _ = try await AdminClient(options: options).call("PUT", "/v1/flags/\(encode(key))", body: body)
                print("\(key): \(value)")
            }
        }
    }

    struct Unset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove an operator flag, so the file or the default decide again.")
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions
        @Argument(help: "*, TOPIC or TOPIC/PARTITION") var key: String
        @Option(name: .long, help: "Why (with --bootstrap, kept in the control record).") var reason: String?

        func run() async throws {
            try await runAdmin {
                if control.bootstrap != nil {
                    try await control.write(key: key, enabled: nil, reason: reason)
                    return
                }
                _ = try await AdminClient(options: options).call("DELETE", "/v1/flags/\(encode(key))")
                print("\(key): unset")
            }
        }
    }
}

/// The group's audit log: every change to its control state, who made it, why, before and after.
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "Print the group's audit log (flags, quarantines and commands changed through the control topic).")
    @OptionGroup var control: ControlOptions
    @Option(name: .long, help: "Only the last N entries.") var last: Int?

    func validate() throws {
        if control.bootstrap == nil { throw ValidationError("the audit log is read from Kafka: add --bootstrap and --group") }
    }

    func run() async throws {
        try await runAdmin {
            let topic = ControlPlaneWriter.auditTopic(forControl: control.controlTopic ?? ControlPlaneFlagSource.defaultTopic(group: control.group!))
            var logger = Logger(label: "sluice.cli")
            logger.logLevel = .error
            let entries = Locked<[AuditEntry]>([])
            let bad = Locked(0)
            do {
                let reader = try ControlTopicReader(
                    bootstrapServers: control.bootstrap!, topic: topic, properties: try control.librdkafkaProperties(), logger: logger
                ) { record in
                    if let value = record.value, let entry = AuditEntry(decoding: value) {
                        entries.withLock { $0.append(entry) }
                    } else {
                        bad.withLock { $0 += 1 }
                    }
                }
                try await reader.load(timeout: .seconds(max(control.wait, 1)))
                await reader.close()
            } catch {
                throw AdminClient.Failure(description: "cannot read audit topic '\(topic)' at \(control.bootstrap!): \(error)")
            }
            var rows = [["AT", "WHO", "WHAT", "BEFORE", "AFTER", "WHY"]]
            let all = entries.withLock { $0 }
            for entry in all.suffix(last ?? all.count) {
                rows.append([
                    Date(timeIntervalSince1970: Double(entry.atMilliseconds) / 1000).formatted(.iso8601), entry.who ?? "-", entry.subject,
                    entry.before ?? "?", entry.after, entry.reason ?? "",
                ])
            }
            print(Table.render(rows))
            let unreadable = bad.withLock { $0 }
            if unreadable > 0 { print("\(unreadable) audit record(s) could not be read") }
        }
    }
}

/// A value behind a lock, for collecting from callbacks.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout sending Value) -> sending R) -> R { mutex.withLock(body) }
}

/// Operator actions on one shard: skip or retry a quarantined message, reset a breaker.
struct ShardsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shards",
        abstract: "Release a quarantined message (skip it, or try it again) and reset shards.",
        subcommands: [List.self, Skip.self, DeadLetter.self, Reset.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the group's shards from its control topic: owner, state, trips and quarantines (no admin URL needed).")
        @OptionGroup var control: ControlOptions

        func validate() throws {
            if control.bootstrap == nil { throw ValidationError("shards list reads the group's control topic: add --bootstrap and --group") }
        }

        func run() async throws {
            try await runAdmin { try await control.listShards() }
        }
    }

    static func parse(_ text: String) throws -> TopicPartition {
        guard let topicPartition = TopicPartition(parsing: text) else {
            throw ValidationError("a shard is TOPIC/PARTITION, e.g. orders/3, got '\(text)'")
        }
        return topicPartition
    }

    struct Skip: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Commit a quarantined message without calling its handler (it killed the process); audited with who and why.")
        @OptionGroup var release: ReleaseOptions

        func run() async throws { try await release.run(.skip, done: "skipped") }
    }

    struct DeadLetter: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dead-letter",
            abstract: "Write a quarantined message to its topic's dead-letter topic, with its crash report, without calling its handler.")
        @OptionGroup var release: ReleaseOptions

        func run() async throws { try await release.run(.deadLetter, done: "released to the dead-letter topic") }
    }

    /// What `skip` and `dead-letter` take: the shard, the offset the operator saw, and why.
    struct ReleaseOptions: ParsableArguments {
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions
        @Argument(help: "TOPIC/PARTITION") var shard: String
        @Option(name: .long, help: "The quarantined message's offset (as `sluice status` shows it); refused if it is not that one.") var offset: Int64
        @Option(name: .long, help: "Why (kept with the release).") var reason: String?

        func validate() throws { _ = try ShardsCommand.parse(shard) }

        func run(_ release: Quarantine.Release, done: String) async throws {
            try await runAdmin {
                let topicPartition = try ShardsCommand.parse(shard)
                if control.bootstrap != nil {
                    try await control.releaseQuarantine(topicPartition, as: release, offset: offset, reason: reason)
                    return
                }
                var body: [String: Any] = ["offset": offset]
                if let reason { body["reason"] = reason }
                let path = release == .deadLetter ? "dead-letter" : "skip"
                _ = try await AdminClient(options: options).call(
                    "POST", "/v1/shards/\(encode(topicPartition.topic))/\(topicPartition.partition)/\(path)", body: body)
                print("\(topicPartition): offset \(offset) \(done)")
            }
        }
    }

    struct Reset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a tripped or backing-off shard now; a quarantined message is released and tried again.")
        @OptionGroup var options: AdminOptions
        @OptionGroup var control: ControlOptions
        @Argument(help: "TOPIC/PARTITION") var shard: String

        func validate() throws { _ = try ShardsCommand.parse(shard) }

        func run() async throws {
            try await runAdmin {
                let topicPartition = try ShardsCommand.parse(shard)
                if control.bootstrap != nil {
                    try await control.reset(topicPartition)
                    return
                }
                let answer = try await AdminClient(options: options).call(
                    "POST", "/v1/shards/\(encode(topicPartition.topic))/\(topicPartition.partition)/reset")
                print("\(topicPartition): reset" + ((answer["quarantineReleased"] as? Bool ?? false) ? "; its quarantined message is tried again" : ""))
            }
        }
    }
}

/// A flag key in one path segment.
private func encode(_ key: String) -> String {
    key.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? key
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running host's shards as a table; with --bootstrap and --group, every shard of the group from its control topic.")
    @OptionGroup var options: AdminOptions
    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await runAdmin {
            if control.bootstrap != nil {
                try await control.listShards()
                return
            }
            let answer = try await AdminClient(options: options).call("GET", "/v1/shards")
            var rows = [["SHARD", "STATE", "FLAG", "PAUSED", "ATTEMPT", "COMMITTED", "LAG", "LAG AGE", "PROCESSED", "FAILED", "LAST ERROR"]]
            var quarantines: [String] = []
            for shard in answer["shards"] as? [[String: Any]] ?? [] {
                let flag = shard["flag"] as? [String: Any] ?? [:]
                let stalled = (shard["stalledForSeconds"] as? Double).map { " (stalled \(Int($0)) s)" } ?? ""
                rows.append([
                    "\(shard["topic"] as? String ?? "")/\(shard["partition"] as? Int ?? 0)",
                    (shard["state"] as? String ?? "") + stalled,
                    (flag["enabled"] as? Bool ?? true) ? "on" : "off",
                    (shard["pauseReasons"] as? [String] ?? []).joined(separator: ","),
                    "\(shard["attempt"] as? Int ?? 0)",
                    (shard["committedOffset"] as? Int).map(String.init) ?? "-",
                    (shard["lag"] as? Int).map(String.init) ?? "-",
                    (shard["lagSeconds"] as? Double).map { String(format: "%.1fs", $0) } ?? "-",
                    "\(shard["processed"] as? Int ?? 0)",
                    "\(shard["failed"] as? Int ?? 0)",
                    String((shard["lastError"] as? String ?? "").prefix(60)),
                ])
                if let quarantine = shard["quarantine"] as? [String: Any] {
                    quarantines.append(
                        "\(shard["topic"] as? String ?? "")/\(shard["partition"] as? Int ?? 0) \(quarantine["state"] as? String ?? ""): "
                            + (quarantine["summary"] as? String ?? ""))
                    // The crash report's first lines: what happened and where.
                    if let report = quarantine["report"] as? String {
                        quarantines.append(contentsOf: report.split(separator: "\n").prefix(6).map { "    " + $0 })
                    }
                }
            }
            print(Table.render(rows))
            if !quarantines.isEmpty {
                print("\nQuarantined messages (their handler calls killed the process):")
                for line in quarantines { print("  " + line) }
            }
        }
    }
}

enum Table {
    static func render(_ rows: [[String]]) -> String {
        guard let header = rows.first else { return "" }
        let widths = header.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.indices.map { row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}
