import Foundation
import Logging
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

@Suite("Flags", .timeLimit(.minutes(2)))
struct FlagTests {
    let logger: Logger = {
        var logger = Logger(label: "sluice.flag-test")
        logger.logLevel = .critical
        return logger
    }()

    func write(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("flags-\(UUID().uuidString).yaml").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("keys parse as *, TOPIC and TOPIC/PARTITION; bad ones are named")
    func keys() throws {
        #expect(try FlagKey(parsing: "*") == .all)
        #expect(try FlagKey(parsing: "orders") == .topic("orders"))
        #expect(try FlagKey(parsing: "orders.v2/3") == .partition(TopicPartition("orders.v2", 3)))
        #expect(throws: SluiceError.self) { try FlagKey(parsing: "orders/x") }
        #expect(throws: SluiceError.self) { try FlagKey(parsing: "") }
    }

    @Test("keys follow Kafka's topic name rules and partition range, with the reason named")
    func keyValidation() {
        func reason(_ text: String) -> String? {
            do {
                _ = try FlagKey(parsing: text)
                return nil
            } catch {
                return (error as? SluiceError)?.message
            }
        }
        #expect(
            reason("orders\u{0}x")
                == "flag key 'orders\\0x': not a Kafka topic name: only letters, digits, '.', '_' and '-' are allowed")
        #expect(
            reason(String(repeating: "a", count: 10_000))?.hasSuffix(
                "a topic name has at most 249 characters, got 10000") == true)
        #expect(reason(String(repeating: "a", count: 10_000))!.count < 200, "a long key is not echoed whole")
        #expect(
            reason("orders/2147483648")
                == "flag key 'orders/2147483648': the partition must be a number in 0...2147483647")
        #expect(reason("orders/-1") == "flag key 'orders/-1': the partition must be a number in 0...2147483647")
        #expect(reason("..") == "flag key '..': '.' and '..' are not topic names")
        #expect(
            reason("or ders")
                == "flag key 'or ders': not a Kafka topic name: only letters, digits, '.', '_' and '-' are allowed")
        #expect(
            reason("a/b/3")
                == "flag key 'a/b/3': not a Kafka topic name: only letters, digits, '.', '_' and '-' are allowed")
        #expect(reason(String(repeating: "a", count: 249) + "/2147483647") == nil)
    }

    @Test("an empty or whitespace-only flag file is a failed read, not 'no flags'; {} is no flags")
    func emptyFileIsAFailedRead() async throws {
        let path = try write("orders: off\n")
        let resolver = FlagResolver(sources: [FileFlagSource(path: path)], logger: logger)
        await resolver.refresh()
        #expect(!resolver.setting(for: TopicPartition("orders", 0)).enabled)
        // What a poll sees while `echo ... > flags.yaml` is half done.
        try "".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(await resolver.refresh() == false)
        #expect(!resolver.setting(for: TopicPartition("orders", 0)).enabled, "the last good flags stay in force")
        #expect(
            resolver.lastErrors["file"]?.hasSuffix(
                "the flag file is empty (a file being rewritten in place?); write {} for no flags, and replace the file atomically (write a new file, then rename it over)"
            ) == true)
        try "  \n# only a comment\n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(await resolver.refresh() == false)
        #expect(!resolver.setting(for: TopicPartition("orders", 0)).enabled)
        try "{}\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(await resolver.refresh())
        #expect(resolver.setting(for: TopicPartition("orders", 0)).enabled, "{} says: no flags")
    }

    @Test("the most specific key wins; with none set, the default")
    func specificity() async throws {
        let admin = InMemoryFlagSource()
        let resolver = FlagResolver(sources: [admin], defaultEnabled: true, logger: logger)
        admin.set(.all, enabled: false)
        admin.set(.topic("orders"), enabled: true)
        admin.set(.partition(TopicPartition("orders", 3)), enabled: false, reason: "incident 42")
        await resolver.refresh()
        #expect(
            resolver.setting(for: TopicPartition("orders", 3))
                == FlagSetting(enabled: false, source: "admin", reason: "incident 42"))
        #expect(resolver.setting(for: TopicPartition("orders", 1)).enabled)
        #expect(!resolver.setting(for: TopicPartition("payments", 0)).enabled)
        admin.unset(.all)
        await resolver.refresh()
        #expect(resolver.setting(for: TopicPartition("payments", 0)) == FlagSetting(enabled: true, source: "default"))
    }

    @Test("a retry topic follows its topic's flag, unless a flag of its own or of its partition is set")
    func retryTopicFollowsItsTopic() async throws {
        let admin = InMemoryFlagSource()
        let resolver = FlagResolver(
            sources: [admin], parentTopics: ["orders.retry.30s": "orders"], logger: logger)
        admin.set(.topic("orders"), enabled: false, reason: "incident 7")
        await resolver.refresh()
        #expect(
            resolver.setting(for: TopicPartition("orders.retry.30s", 2))
                == FlagSetting(enabled: false, source: "admin", reason: "incident 7"))
        admin.set(.topic("orders.retry.30s"), enabled: true)
        admin.set(.partition(TopicPartition("orders.retry.30s", 1)), enabled: false)
        await resolver.refresh()
        #expect(resolver.setting(for: TopicPartition("orders.retry.30s", 2)).enabled)
        #expect(!resolver.setting(for: TopicPartition("orders.retry.30s", 1)).enabled)
        admin.set(.all, enabled: false)
        admin.unset(.topic("orders"))
        admin.unset(.topic("orders.retry.30s"))
        await resolver.refresh()
        #expect(!resolver.setting(for: TopicPartition("orders.retry.30s", 0)).enabled, "then *")
        #expect(!resolver.setting(for: TopicPartition("payments.retry.30s", 0)).enabled)
    }

    @Test("layers: an admin override beats the file for the same key")
    func layers() async throws {
        let admin = InMemoryFlagSource()
        let file = FileFlagSource(path: try write("orders: off\npayments: off\n"))
        let resolver = FlagResolver(sources: [admin, file], logger: logger)
        admin.set(.topic("orders"), enabled: true, reason: "hotfix deployed")
        await resolver.refresh()
        #expect(resolver.setting(for: TopicPartition("orders", 0)).source == "admin")
        #expect(resolver.setting(for: TopicPartition("orders", 0)).enabled)
        #expect(resolver.setting(for: TopicPartition("payments", 0)) == FlagSetting(enabled: false, source: "file"))
    }

    @Test("the file accepts YAML booleans, quoted partition keys and JSON")
    func fileFormats() async throws {
        let yaml = try await FileFlagSource(
            path: try write("orders: off\n\"orders/3\": on\npayments: false\n'*': true\n")
        ).load()
        #expect(yaml[.topic("orders")]?.enabled == false)
        #expect(yaml[.partition(TopicPartition("orders", 3))]?.enabled == true)
        #expect(yaml[.topic("payments")]?.enabled == false)
        #expect(yaml[.all]?.enabled == true)
        let json = try await FileFlagSource(path: try write("{\"orders\": \"off\", \"orders/1\": true}")).load()
        #expect(json.count == 2)
        let rates = try await FileFlagSource(path: try write("payments: 200/s\n\"orders/3\": 0.5/s\n")).load()
        #expect(
            rates[.topic("payments")] == FlagSetting(enabled: true, source: "file", rate: 200),
            "a rate slows, it does not stop")
        #expect(rates[.partition(TopicPartition("orders", 3))]?.rate == 0.5)
    }

    @Test("a malformed file names line and column, and the last good flags stay in force")
    func malformedKeepsLastGood() async throws {
        let path = try write("orders: off\n")
        let resolver = FlagResolver(sources: [FileFlagSource(path: path)], logger: logger)
        #expect(await resolver.refresh())
        #expect(!resolver.setting(for: TopicPartition("orders", 0)).enabled)

        try "orders: on\npayments: maybe\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(await resolver.refresh() == false)
        #expect(!resolver.setting(for: TopicPartition("orders", 0)).enabled, "last good flags kept")
        #expect(resolver.failureCounts["file"] == 1)
        #expect(
            resolver.lastErrors["file"]
                == "\(path):2:11: flag 'payments': expected on, off or a rate such as 200/s, got 'maybe'")

        try "orders: [on\n".write(toFile: path, atomically: true, encoding: .utf8)
        await resolver.refresh()
        #expect(resolver.lastErrors["file"]?.hasPrefix("\(path): not valid YAML or JSON") == true)
        #expect(resolver.failureCounts["file"] == 2)

        try "\"orders/x\": off\n".write(toFile: path, atomically: true, encoding: .utf8)
        await resolver.refresh()
        #expect(resolver.lastErrors["file"]?.hasPrefix("\(path):1:1: flag key 'orders/x'") == true)

        try FileManager.default.removeItem(atPath: path)
        await resolver.refresh()
        #expect(
            !resolver.setting(for: TopicPartition("orders", 0)).enabled, "a missing file keeps the last good flags too")
        #expect(resolver.failureCounts["file"] == 4)

        try "orders: on\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(await resolver.refresh())
        #expect(resolver.setting(for: TopicPartition("orders", 0)).enabled)
        #expect(resolver.lastErrors["file"] == nil)
    }

    @Test("two refreshes racing: the newest load wins, even when the older one finishes last")
    func racingRefreshes() async throws {
        let source = ControlledFlagSource()
        let resolver = FlagResolver(sources: [source], logger: logger)
        // The first load reads "orders off" and then stalls; meanwhile the flag goes on and a second refresh
        // reads and applies it; then the first load finishes.
        source.next(.stalled([.topic("orders"): FlagSetting(enabled: false, source: "test")]))
        let older = Task { await resolver.refresh() }
        try await waitUntil("the first load is in progress") { source.stalledLoads == 1 }
        source.next(.immediate([.topic("orders"): FlagSetting(enabled: true, source: "test")]))
        await resolver.refresh()
        #expect(resolver.setting(for: TopicPartition("orders", 0)).enabled)
        source.release()
        _ = await older.value
        #expect(
            resolver.setting(for: TopicPartition("orders", 0)).enabled, "the older load did not overwrite the newer")
    }
}

@Suite("Flag changes reach the supervisor", .timeLimit(.minutes(1)))
struct FlagChangeNotificationTests {
    @Test("a change applied by any refresh (not only run's own) is announced to run's listener")
    func everyRefreshAnnounces() async throws {
        let source = ControlledFlagSource()
        // Polled so rarely that only the test's refresh reads the source.
        let resolver = FlagResolver(sources: [source], pollInterval: .seconds(3_600), logger: HostFixture.logger)
        let announced = Locked(0)
        let running = Task { await resolver.run { announced.withLock { $0 += 1 } } }
        defer { running.cancel() }
        source.next(.immediate([.topic("orders"): FlagSetting(enabled: false, source: "test")]))
        #expect(await resolver.refresh())
        try await waitUntil("the change was announced") { announced.value == 1 }
        // A refresh that changes nothing announces nothing.
        source.next(.immediate([.topic("orders"): FlagSetting(enabled: false, source: "test")]))
        #expect(await resolver.refresh() == false)
        source.next(.immediate([:]))
        #expect(await resolver.refresh())
        try await waitUntil("the second change was announced") { announced.value == 2 }
    }
}

/// A flag source whose loads the test scripts: immediate, or stalled until released.
final class ControlledFlagSource: FlagSource {
    enum Load: Sendable {
        case immediate([FlagKey: FlagSetting])
        case stalled([FlagKey: FlagSetting])
    }

    let name = "controlled"
    var changes: AsyncStream<Void>? { nil }
    private let state = Locked<(queue: [Load], stalled: Int, released: Bool)>(([], 0, false))

    func next(_ load: Load) { state.withLock { $0.queue.append(load) } }
    var stalledLoads: Int { state.value.stalled }
    func release() { state.withLock { $0.released = true } }

    func load() async throws -> [FlagKey: FlagSetting] {
        let load = state.withLock { $0.queue.removeFirst() }
        switch load {
        case .immediate(let flags):
            return flags
        case .stalled(let flags):
            state.withLock { $0.stalled += 1 }
            while !state.value.released { try await Task.sleep(for: .milliseconds(1)) }
            return flags
        }
    }
}
