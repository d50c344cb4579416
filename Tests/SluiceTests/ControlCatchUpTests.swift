import SluiceKafka
import SluiceTesting
import Synchronization
import Testing

@testable import Sluice

/// A control plane whose catch-up the test holds.
final class HeldControl: ShardControlState {
    private let held = Mutex<Hang?>(nil)
    let catchUps = Locked(0)
    var appliedPosition: Int64 { 0 }

    /// Catch-ups from now on wait until the test releases them.
    func hold() -> Hang {
        let hang = Hang()
        held.withLock { $0 = hang }
        return hang
    }

    func catchUp(timeout: Duration) async -> Bool {
        let hang = held.withLock { $0 }
        catchUps.withLock { $0 += 1 }
        await hang?.wait()
        return true
    }

    func trip(for topicPartition: TopicPartition) -> ControlRecord.Trip? { nil }
    func commands(from offset: Int64) -> [(offset: Int64, command: ControlCommand)] { [] }
}

/// The control topic is read to its end before an assigned shard starts (a trip its last owner wrote moments ago
/// is known first), and that read waits on the network: beside the supervisor loop, never in it.
@Suite("Reading the control topic for an assignment", .timeLimit(.minutes(2)))
struct ControlCatchUpTests {
    static func start() throws -> (SluiceHost, HandledMessages, ScriptedConsumer, HeldControl, Task<Void, any Error>) {
        let host = SupervisorLoopTests.host()
        let handled = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let consumer = ScriptedConsumer()
        let control = HeldControl()
        let handlers = try host.startOnce()
        let running = Task {
            try await host.run(
                handlers: handlers, consumer: consumer, producer: nil, deadLetters: nil, shardControl: control)
        }
        return (host, handled, consumer, control, running)
    }

    @Test(
        "while the control topic is read for a new assignment, the running shards' events are handled; the new shard starts once it was read"
    )
    func otherShardsGoOn() async throws {
        let (host, handled, consumer, control, running) = try Self.start()
        let first = TopicPartition("orders", 0)
        let second = TopicPartition("orders", 1)
        consumer.assign([first])
        consumer.deliverAssignment([first])
        consumer.append(first, count: 5)
        try await waitUntil("the first shard runs") { handled.distinct == 5 }

        let hang = control.hold()
        consumer.assign([second])
        consumer.deliverAssignment([second])
        consumer.append(second, count: 3)
        try await waitUntil("the second assignment's catch-up started") { control.catchUps.value == 2 }
        // An operator turns the first shard off meanwhile: the loop acts on it at once.
        host.operatorFlags.set(.partition(first), enabled: false)
        await host.flags.refresh()
        try await waitUntil("the first shard is off while the catch-up waits") {
            host.shards.first { $0.topicPartition == first }?.state == .off
        }
        #expect(!host.shards.contains { $0.topicPartition == second }, "the second shard waits for the control topic")
        #expect(
            handled.all.value.allSatisfy { $0.partition == 0 },
            "nothing of the second partition handled before the catch-up")

        hang.release()
        try await waitUntil("the second shard starts once the control topic was read") {
            handled.all.value.filter { $0.partition == 1 }.count == 3
        }
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test("a partition revoked while the control topic is read for it is released at once and never started")
    func revokedWhileReading() async throws {
        let (host, handled, consumer, control, running) = try Self.start()
        let partition = TopicPartition("orders", 0)
        let hang = control.hold()
        consumer.assign([partition])
        consumer.deliverAssignment([partition])
        consumer.append(partition, count: 3)
        try await waitUntil("the catch-up started") { control.catchUps.value == 1 }
        consumer.revoke([partition])
        try await waitUntil("the revocation is released while the catch-up waits") {
            consumer.releasedPartitions == [partition]
        }
        hang.release()
        // The loop handles its inputs in order: once a later tick is handled, the catch-up's end was too.
        let ticks = host.ticks
        try await waitUntil("the loop went on past the catch-up") { host.ticks > ticks + 1 }
        #expect(host.shards.isEmpty, "never started")
        #expect(handled.count == 0)
        host.shutdown()
        consumer.finish()
        try await running.value
    }
}
