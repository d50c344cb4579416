import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Where a flag change goes instead of one host's admin API: the group's control topic, which every host
/// of the group reads.
struct ControlOptions: ParsableArguments {
    @Option(
        name: .long, help: "Write to the group's control topic through these brokers instead of one host's admin API.")
    var bootstrap: String?

    @Option(name: .long, help: "The consumer group whose control topic to write (with --bootstrap).")
    var group: String?

    @Option(name: .long, help: "The control topic (default __sluice-control-GROUP).")
    var controlTopic: String?

    @Option(name: .long, help: "How long to wait for the group's hosts to apply the change (seconds).")
    var wait: Double = 10

    @Flag(
        name: .long,
        help:
            "With --bootstrap: write without waiting for any host to apply it (ahead of a deploy); otherwise a change no live host applied exits 1."
    )
    var noWait = false

    @Flag(
        name: .long,
        help:
            "With --bootstrap: list the shards of the group the change would touch (from the hosts' status); write nothing."
    )
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

    /// The brokers and the control topic a command goes to (nil without `--bootstrap`: the admin API is used),
    /// and a quiet logger for the clients.
    private var target: (bootstrap: String, topic: String, logger: Logger)? {
        guard let bootstrap else { return nil }
        var logger = Logger(label: "sluice.cli")
        logger.logLevel = .error
        return (bootstrap, controlTopic ?? ControlPlaneFlagSource.defaultTopic(group: group!), logger)
    }

    /// Writes a flag record; prints where it went.
    func write(key: String, enabled: Bool?, reason: String?, rate: Double? = nil) async throws {
        guard let target else { return }
        let (bootstrap, topic, logger) = target
        let flagKey: FlagKey
        do {
            flagKey = try FlagKey(parsing: key)
        } catch {
            throw AdminClient.Failure(description: "\((error as? SluiceError)?.message ?? "\(error)")")
        }
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
                _ = try await KafkaTopicAdmin.ensure(
                    newTopic, bootstrapServers: bootstrap, properties: try librdkafkaProperties(),
                    timeout: .seconds(max(wait, 30)))
            } catch {
                throw AdminClient.Failure(
                    description:
                        "control topic '\(topic)': topic '\(newTopic.name)' is missing at \(bootstrap) and could not be created: \(error)"
                )
            }
        }
        let records = RecordTable(watching: flagKey)
        let loading = Task { try await open(topic: topic, bootstrap: bootstrap, logger: logger, into: records) }
        do {
            let writer = try ControlPlaneWriter(
                bootstrapServers: bootstrap, topic: topic, properties: try librdkafkaProperties(), keys: keys(),
                logger: logger)
            let who = "\(user)@\(ProcessInfo.processInfo.hostName) via sluice CLI"
            let written = ContinuousClock.now
            let offset = try await writer.setFlag(
                flagKey, enabled: enabled, reason: reason, who: who, rate: rate, audited: false)
            let (_, reader) = try await loading.value
            defer { Task { await reader.close() } }
            let before = records.watchedFlag(before: offset).map {
                FlagSetting(enabled: $0.enabled, source: "control", reason: $0.reason, rate: $0.rate)
            }
            await writer.auditFlag(
                flagKey, enabled: enabled, rate: rate, reason: reason, who: who, before: before, offset: offset)
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
    private func open(topic: String, bootstrap: String, logger: Logger, into records: RecordTable = RecordTable())
        async throws
        -> (RecordTable, ControlTopicReader)
    {
        if let keys = try keys(), keys.verifies { records.verify(with: keys, topic: topic) }
        do {
            let reader = try ControlTopicReader(
                bootstrapServers: bootstrap, topic: topic, properties: try librdkafkaProperties(), logger: logger
            ) { record in
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
    private func preview(
        _ key: FlagKey, enabled: Bool?, rate: Double?, topic: String, bootstrap: String, logger: Logger
    ) async throws {
        let records = try await read(topic: topic, bootstrap: bootstrap, logger: logger)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        var rows = [["HOST", "SHARD", "STATE", "WOULD"]]
        var changes = 0
        var hosts = Set<String>()
        for (identity, status) in records.hosts.sorted(by: { $0.key < $1.key })
        where status.isLive(now: now, window: 15_000) {
            for (shard, state) in status.shards.sorted(by: { $0.key < $1.key }) {
                let parts = shard.split(separator: "/")
                guard parts.count == 2, let partition = Int32(parts[1]),
                    key.covers(TopicPartition(String(parts[0]), partition))
                else { continue }
                let (change, changing) = ControlRecord.flagEffect(on: state, enabled: enabled, rate: rate)
                if changing {
                    changes += 1
                    hosts.insert(identity)
                }
                rows.append([identity, shard, state, change])
            }
        }
        print(Table.render(rows))
        print(
            "\(key): \(rate.map(ControlRecord.describeRate) ?? enabled.map { $0 ? "on" : "off" } ?? "unset") would change \(changes) shard(s) on \(hosts.count) host(s); nothing was written (--dry-run)"
        )
    }

    /// Releases a quarantined message through the control topic: `skip` commits it without a handler call,
    /// `deadLetter` writes it to the dead-letter topic, `retry` tries it again. Refused when the topic holds
    /// no quarantine there, or one at another offset.
    func releaseQuarantine(
        _ topicPartition: TopicPartition, as release: Quarantine.Release, offset: Int64?, reason: String?
    ) async throws {
        guard let target else { return }
        let (bootstrap, topic, logger) = target
        let (records, reader) = try await open(topic: topic, bootstrap: bootstrap, logger: logger)
        defer { Task { await reader.close() } }
        guard let quarantine = records.quarantines[topicPartition] else {
            throw AdminClient.Failure(
                description: "no quarantined message on \(topicPartition) in control topic '\(topic)'")
        }
        let user = ProcessInfo.processInfo.environment["USER"] ?? "unknown"
        let released: Quarantine?
        do {
            released = try quarantine.released(
                release, offset: offset, who: "\(user)@\(ProcessInfo.processInfo.hostName) via sluice CLI",
                reason: reason, of: topicPartition)
        } catch {
            throw AdminClient.Failure(description: error.message)
        }
        do {
            let writer = try ControlPlaneWriter(
                bootstrapServers: bootstrap, topic: topic, properties: try librdkafkaProperties(), keys: keys(),
                logger: logger)
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
        guard let target else { return }
        let (bootstrap, topic, logger) = target
        let (records, reader) = try await open(topic: topic, bootstrap: bootstrap, logger: logger)
        defer { Task { await reader.close() } }
        if records.quarantines[topicPartition] != nil {
            try await releaseQuarantine(topicPartition, as: .retry, offset: nil, reason: nil)
        }
        let user = ProcessInfo.processInfo.environment["USER"] ?? "unknown"
        do {
            let writer = try ControlPlaneWriter(
                bootstrapServers: bootstrap, topic: topic, properties: try librdkafkaProperties(), keys: keys(),
                logger: logger)
            let started = ContinuousClock.now
            let offset = try await writer.send(
                ControlCommand(
                    action: .reset, topicPartition: topicPartition,
                    who: "\(user)@\(ProcessInfo.processInfo.hostName) via sluice CLI"))
            await writer.close()
            try await report(
                "\(topicPartition): reset sent (control topic \(topic), offset \(offset))", offset: offset, in: records,
                since: started)
        } catch let failure as AdminClient.Failure {
            throw failure
        } catch {
            throw AdminClient.Failure(description: "cannot write to control topic '\(topic)' at \(bootstrap): \(error)")
        }
    }

    /// Prints every shard of the group as its live hosts last reported it (host records from the last 15 s),
    /// with the group's trips and quarantines.
    func listShards() async throws {
        guard let target else { return }
        let (bootstrap, topic, logger) = target
        let records = try await read(topic: topic, bootstrap: bootstrap, logger: logger)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        var owned: [(shard: String, host: String, state: String, detail: ShardReport?)] = []
        for (identity, status) in records.hosts where status.isLive(now: now, window: 15_000) {
            for (shard, state) in status.shards { owned.append((shard, identity, state, status.details[shard])) }
        }
        var rows = [["SHARD", "STATE", "HOST", "PAUSED", "LAG", "NOTE"]]
        for entry in owned.sorted(by: { ($0.shard, $0.host) < ($1.shard, $1.host) }) {
            var note = ""
            if let partition = try? ShardsCommand.parse(entry.shard) {
                if let quarantine = records.quarantines[partition] {
                    note = "quarantine: \(quarantine.state.rawValue) at offset \(quarantine.offset)"
                } else if let trip = records.trips[partition] {
                    note = "tripped: \(trip.reason.prefix(60))"
                }
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
        guard let target else { return }
        let (bootstrap, topic, logger) = target
        let records = try await read(topic: topic, bootstrap: bootstrap, logger: logger)
        var rows = [["KEY", "VALUE", "REASON", "WHO"]]
        for (key, flag) in records.flags.sorted(by: { $0.key < $1.key }) {
            rows.append([
                key.description, flag.rate.map(ControlRecord.describeRate) ?? (flag.enabled ? "on" : "off"),
                flag.reason ?? "", flag.who ?? "",
            ])
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
            hostRows.append([
                identity, "\(status.applied)", "\(status.shards.count)", "\(status.ageSeconds(now: now)) s ago",
            ])
        }
        print(Table.render(hostRows))
        if records.bad > 0 { print("\(records.bad) control record(s) could not be read") }
    }

    /// Prints what was written and which hosts applied it (waiting up to `--wait`). A change no live host applied
    /// is a failure: an operator must not read "done" when no host of the group will act on it (no host is up,
    /// or the group's hosts run without `control.enabled`). `--no-wait` writes ahead of a deploy.
    private func report(_ written: String, offset: Int64, in records: RecordTable, since start: ContinuousClock.Instant)
        async throws
    {
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
    private func acknowledgements(of offset: Int64, in records: RecordTable) async throws -> (
        applied: Int, live: Int, missing: [String]
    ) {
        let deadline = ContinuousClock.now + .milliseconds(Int(wait * 1000))
        while true {
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let live = records.hosts.filter { $0.value.isLive(now: now, window: 15_000) }
            let missing = live.filter { $0.value.applied <= offset }.map(\.key)
            if missing.isEmpty || ContinuousClock.now >= deadline {
                return (live.count - missing.count, live.count, missing)
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
