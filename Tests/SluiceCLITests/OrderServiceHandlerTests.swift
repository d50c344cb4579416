import CSQLite
import Foundation
import Sluice
import SluiceKafka
import SluiceTesting
import Testing

@testable import OrderService

/// OrderService's handlers tested the way a user of Sluice would: with SluiceTesting, in-process, no broker.
@Suite("OrderService handlers with SluiceTesting", .timeLimit(.minutes(1)))
struct OrderServiceHandlerTests {
    /// The orders topic as Examples/OrderService/sluice.yaml configures it.
    static var orders: TopicConfiguration {
        var orders = TopicConfiguration()
        orders.ordering = .key
        orders.processors = 8
        orders.onFailure = .init(
            retries: 3, backoff: .init(initial: .milliseconds(50), maximum: .seconds(1)), then: .deadLetter)
        orders.deadLetterTopic = "orders.dlq"
        return orders
    }

    @Test(
        "orders are handled in sequence per customer; an order that does not parse is dead-lettered after 4 attempts; all is committed"
    )
    func orders() async {
        let handler = OrderHandler()
        let run = await HandlerHarness(topic: "orders", configuration: Self.orders, handler: handler).run(
            TestMessages.values(
                [
                    #"{"key":"a","seq":1,"n":0}"#, "not an order", #"{"key":"b","seq":1,"n":2}"#,
                    #"{"key":"a","seq":2,"n":3}"#,
                ],
                keys: ["a", "x", "b", "a"], topic: "orders"))
        #expect(run[0] == .handled(attempts: 1))
        #expect(run[1] == .deadLettered(attempts: 4))
        #expect(run[2] == .handled(attempts: 1) && run[3] == .handled(attempts: 1))
        #expect(run.committedOffset == 4)
        #expect(
            run.deadLetters.first?.error.contains("dataCorrupted") == true
                || run.deadLetters.first?.error.isEmpty == false)
        let (handled, violations) = handler.totals
        #expect(handled == 3 && violations == 0)
    }

    @Test(
        "payments are written to SQLite in one transaction per batch; a store that fails stops the shard, nothing committed"
    )
    func payments() async throws {
        var payments = TopicConfiguration()
        payments.batch = .init(size: 200, timeout: .milliseconds(10))
        payments.onFailure = .init(
            retries: 5, backoff: .init(initial: .milliseconds(100), maximum: .seconds(5)), then: .stop)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("payments-\(UUID().uuidString).sqlite")
            .path
        let store = try PaymentStore(path: path)
        let values = (0..<250).map { #"{"key":"k\#($0 % 5)","seq":\#($0),"n":\#($0)}"# }
        let run = await HandlerHarness(
            topic: "payments", configuration: payments, batchHandler: PaymentsSink(store: store)
        )
        .run(TestMessages.values(values, topic: "payments"))
        #expect(run.committedOffset == 250 && run.crash == nil)
        #expect(store.count == 250)

        // The table goes away under the service: every write fails, 6 attempts, then the shard stops.
        var database: OpaquePointer?
        #expect(sqlite3_open(path, &database) == SQLITE_OK)
        #expect(sqlite3_exec(database, "DROP TABLE payments", nil, nil, nil) == SQLITE_OK)
        sqlite3_close(database)
        let failing = await HandlerHarness(
            topic: "payments", configuration: payments, batchHandler: PaymentsSink(store: store)
        )
        .run(TestMessages.values(Array(values.prefix(10)), topic: "payments", firstOffset: 250))
        #expect(failing[250] == .notCommitted && failing[259] == .notCommitted)
        #expect(failing.crash?.offset == 250 && failing.committedOffset == 250, "nothing past 250 is committed")
        #expect(
            failing.crash.map { "\($0)" }?.contains("no such table") == true, "\(String(describing: failing.crash))")
    }
}
