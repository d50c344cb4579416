import Foundation
import SluiceKafka
import SluiceTesting
import Testing

/// Delayed retries as a service runs them: two OrderService processes in one group, every tenth order failing
/// while it is younger than 20 s (`ORDER_SERVICE_FAIL_YOUNGER_THAN`), `onFailure: { then: retryLater, delays: [25s] }`.
@Suite("Delayed retries with service processes", .timeLimit(.minutes(4)))
struct RetryLaterProcessTests {
    @Test(
        "two services, every tenth order failing while younger than 20 s: the later orders of its partition go on without it, it is handled from orders.retry.25s, every order handled, nothing dead-lettered"
    )
    func youngOrdersWaitInTheRetryTopic() async throws {
        let cluster = try await TestClusters.start(
            topics: ["orders": 4, "payments": 2, "orders.dlq": 1, "orders.retry.25s": 4])
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let handled = FileManager.default.temporaryDirectory.appendingPathComponent(
            "sluice-retry-\(UUID().uuidString).handled"
        ).path
        let environment = [
            "SLUICE_TOPICS_ORDERS_ON_FAILURE_RETRIES": "0", "SLUICE_TOPICS_ORDERS_ON_FAILURE_THEN": "retryLater",
            "SLUICE_TOPICS_ORDERS_ON_FAILURE_DELAYS": "25s", "ORDER_SERVICE_FAIL_YOUNGER_THAN": "20s",
            "ORDER_SERVICE_HANDLED_LOG": handled,
        ]
        let services = try (0..<2).map { _ in
            try OrderServiceTests.startService(cluster, group: group, environment: environment).0
        }
        // A failed step ends the test early: its services must not outlive it.
        defer {
            for service in services where service.process.isRunning { kill(service.process.processIdentifier, SIGKILL) }
        }
        // Steady traffic: 2,000 orders over 4 s.
        let produced = 2_000
        let producer = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "orders", "--count", "\(produced)", "--rate",
            "500", "--keys", "50",
        ])
        await producer.expectCleanExit()
        /// Each handled order's first position ("PARTITION OFFSET"), in the order they were handled.
        func handledOrders() -> [String] {
            ((try? String(contentsOfFile: handled, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
        let deadline = ContinuousClock.now + .seconds(120)
        while ContinuousClock.now < deadline, Set(handledOrders()).count < produced {
            try await Task.sleep(for: .milliseconds(200))
        }
        let lines = handledOrders()
        #expect(Set(lines).count == produced, "every order handled: \(Set(lines).count) of \(produced)")
        // The orders that failed (those still younger than 20 s when first handled: every tenth, unless the machine is far behind), each named
        // in its service's "handler failed" line.
        let failed = Set(
            services.flatMap { service in
                service.errors.text.split(separator: "\n").compactMap { line -> Int? in
                    guard let range = line.range(of: "order "), line.contains("is not ready downstream yet") else {
                        return nil
                    }
                    return Int(line[range.upperBound...].prefix { $0.isNumber })
                }
            })
        #expect(failed.count > produced / 20 && failed.allSatisfy { $0 % 10 == 0 }, "\(failed.count) failed")
        let retried = try await cluster.records(topic: "orders.retry.25s", partitions: 4) { $0.count >= failed.count }
        #expect(retried.count == failed.count, "each failed order went to the retry topic once")
        // Its partition went on without it: by the time a retried order was handled (25 s after it failed), many
        // later orders of its partition were (at 125 a second per partition; a handful overtake one another
        // anyway, over the eight lanes of a partition).
        let origins = retried.compactMap { record -> String? in
            let header = { (key: String) in
                record.headers.last { $0.key == key }.map { String(decoding: $0.value ?? [], as: UTF8.self) }
            }
            guard let partition = header("sluice.retry.origin.partition"),
                let offset = header("sluice.retry.origin.offset")
            else { return nil }
            return "\(partition) \(offset)"
        }
        #expect(origins.count == retried.count, "each retry record names its origin")
        // For each: the later orders of its partition handled before it, and how many later ones there are (the last
        // orders of a partition have few).
        var overtaken: [(before: Int, later: Int)] = []
        let lastOffset = Dictionary(
            lines.compactMap { line -> (Int, Int)? in
                let parts = line.split(separator: " ").compactMap { Int($0) }
                return parts.count == 2 ? (parts[0], parts[1]) : nil
            }, uniquingKeysWith: max)
        for origin in origins {
            guard let index = lines.firstIndex(of: origin) else { continue }
            let parts = origin.split(separator: " ").compactMap { Int($0) }
            let before = lines[..<index].filter { line in
                let other = line.split(separator: " ").compactMap { Int($0) }
                return other.count == 2 && other[0] == parts[0] && other[1] > parts[1]
            }.count
            overtaken.append((before, (lastOffset[parts[0]] ?? 0) - parts[1]))
        }
        #expect(overtaken.count == origins.count)
        // Every tenth of those later ones was retried too: at least half of the rest, or 50, came first.
        let held = overtaken.filter { $0.before < min(50, $0.later / 2) }
        #expect(held.isEmpty, "retried orders handled before most later ones of their partition: \(held.prefix(5))")
        for service in services { service.process.terminate() }
        for service in services { #expect(await service.exit() == 0) }
        let letters = try await cluster.endOffsets(topic: "orders.dlq", partitions: 1)
        #expect(letters.values.reduce(0, +) == 0, "nothing dead-lettered")
        print(
            "delayed retries, two services: \(retried.count) orders retried, each handled after up to \(overtaken.map(\.before).max() ?? 0) later orders of its partition"
        )
    }
}
