import ArgumentParser
import Dispatch
import Foundation
import Logging
import Metrics
import Prometheus
import Sluice
import SluiceAdmin
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Counts handled messages, and notes the time and the process's CPU at the first and when `target` have been
/// counted (telling `window` at both). Two clock reads a run, not one per message: the bench's own counting
/// stays out of what a case measures.
final class RateCounter: Sendable {
    private let counted = Atomic<Int>(0)
    private let marks = Mutex<(first: ContinuousClock.Instant?, last: ContinuousClock.Instant?, cpuAtFirst: Double)>(
        (nil, nil, 0))
    private let target: Int
    private let window: MeasurementWindow

    init(target: Int = .max, window: MeasurementWindow = .none) {
        self.target = target
        self.window = window
    }

    func add(_ count: Int) {
        let before = counted.wrappingAdd(count, ordering: .relaxed).oldValue
        if before == 0 {
            let now = ContinuousClock.now
            let cpu = RawConsumeLoop.processCPUSeconds()
            marks.withLock {
                $0.first = now
                $0.cpuAtFirst = cpu
            }
            window.opened()
        }
        if before < target, before + count >= target {
            let now = ContinuousClock.now
            marks.withLock { $0.last = now }
            window.closed()
        }
    }

    var count: Int { counted.load(ordering: .relaxed) }

    /// The process's CPU seconds since the first message (0 before it).
    var cpuSinceFirst: Double {
        let (first, cpuAtFirst) = marks.withLock { ($0.first, $0.cpuAtFirst) }
        return first == nil ? 0 : RawConsumeLoop.processCPUSeconds() - cpuAtFirst
    }

    /// From the first message to the target's (to now while the target is not reached); 1 before the first.
    var seconds: Double {
        let (first, last) = marks.withLock { ($0.first, $0.last) }
        guard let first else { return 1 }
        let end = last ?? ContinuousClock.now
        return end > first ? (end - first).seconds : 1
    }
}

/// Latencies noted by handlers, in milliseconds.
final class LatencyRecorder: Sendable {
    private let state: Mutex<[Double]>
    init(capacity: Int) {
        var values: [Double] = []
        values.reserveCapacity(capacity)
        state = Mutex(values)
    }
    func add(_ value: Double) { state.withLock { $0.append(value) } }
    var count: Int { state.withLock { $0.count } }
    var values: [Double] { state.withLock { $0 } }
}

/// Notes, when its call starts, how long ago the message was produced.
struct LatencyHandler: MessageHandler {
    let recorder: LatencyRecorder
    func handle(_ message: Message, context: ShardContext) async throws {
        guard let stamp = message.timestampMilliseconds else { return }
        recorder.add(RawConsumeLoop.nowMilliseconds() - Double(stamp))
    }
}

struct CountingHandler: MessageHandler {
    let counter: RateCounter
    func handle(_ message: Message, context: ShardContext) async throws { counter.add(1) }
}

/// Writes each message to `topic` with the message's key, value and timestamp (so a reader of `topic` sees how
/// long ago the input was produced).
struct StampForwardingHandler: MessageHandler {
    let topic: String
    func handle(_ message: Message, context: ShardContext) async throws {
        try await context.send([
            ProducerRecord(
                topic: topic, key: message.key.map { Array($0) }, value: Array(message.value),
                timestampMilliseconds: message.timestampMilliseconds)
        ])
    }
}

/// Writes each message to `bench.out` (same key and value), then counts it.
struct ForwardingHandler: MessageHandler {
    let counter: RateCounter
    func handle(_ message: Message, context: ShardContext) async throws {
        try await context.send(topic: "bench.out", key: message.key.map { Array($0) }, value: Array(message.value))
        counter.add(1)
    }
}

struct CountingBatchHandler: BatchHandler {
    let counter: RateCounter
    func handle(_ batch: [Message], context: ShardContext) async throws { counter.add(batch.count) }
}

struct CrashingHandler: MessageHandler {
    struct Crash: Error {}
    let counter: RateCounter
    func handle(_ message: Message, context: ShardContext) async throws {
        if message.partition == 0 { throw Crash() }
        counter.add(1)
    }
}

final class SeenBox: Sendable {
    private let seen = Mutex(false)
    func reset() { seen.withLock { $0 = false } }
    func mark() { seen.withLock { $0 = true } }
    var value: Bool { seen.withLock { $0 } }
}

/// Spins for `spin` per message (a handler slower than its topic), then counts it.
struct SpinningHandler: MessageHandler {
    let counter: RateCounter
    let spin: Duration
    func handle(_ message: Message, context: ShardContext) async throws {
        let until = ContinuousClock.now + spin
        while ContinuousClock.now < until {}
        counter.add(1)
    }
}

struct SeenHandler: MessageHandler {
    let seen: SeenBox
    func handle(_ message: Message, context: ShardContext) async throws { seen.mark() }
}

/// Counts deliveries per partition while preloading.
final class PartitionTally: Sendable {
    private let state = Mutex<(delivered: Int, perPartition: [Int32: Int], failure: KafkaError?)>((0, [:], nil))
    func enqueue(_ record: ProducerRecord, on producer: KafkaProducer) throws -> Bool {
        do {
            try producer.enqueue(record) { result in
                self.state.withLock { state in
                    switch result {
                    case .success(let report):
                        state.delivered += 1
                        state.perPartition[report.topicPartition.partition, default: 0] += 1
                    case .failure(let error):
                        state.failure = error
                    }
                }
            }
            return true
        } catch {
            if error.code == .queueFull { return false }
            throw error
        }
    }
    var delivered: Int { state.withLock { $0.delivered } }
    var perPartition: [Int32: Int] { state.withLock { $0.perPartition } }
    var failure: KafkaError? { state.withLock { $0.failure } }
}
