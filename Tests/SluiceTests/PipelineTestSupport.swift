import Logging
import SluiceKafka
import SluiceTesting
import Synchronization
import Testing
import Tracing

@testable import Sluice

/// A value behind a lock that closures can share.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout sending Value) -> sending R) -> R { mutex.withLock(body) }
    var value: Value { mutex.withLock { $0 } }
}

/// Records the pipeline's pause calls: "pause"/"resume" for back-pressure, "pause retryDelay" for another reason.
final class RecordingFlowControl: ShardFlowControl {
    let calls = Locked<[String]>([])
    func setPaused(_ reason: KafkaPauseReason, _ on: Bool, pipeline: UInt64) {
        let call = (on ? "pause" : "resume") + (reason == .backpressure ? "" : " \(reason)")
        calls.withLock { $0.append(call) }
    }
}

/// A handler built from a closure.
struct ClosureHandler: MessageHandler {
    let body: @Sendable (Message, ShardContext) async throws -> Void
    func handle(_ message: Message, context: ShardContext) async throws { try await body(message, context) }
}

struct ClosureBatchHandler: BatchHandler {
    let body: @Sendable ([Message], ShardContext) async throws -> Void
    func handle(_ batch: [Message], context: ShardContext) async throws { try await body(batch, context) }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
}

/// Records dead-lettered messages; refuses the offsets in `failing`.
final class RecordingDeadLetters: DeadLetterSink {
    let written = Locked<[(Int64, String, Int)]>([])
    /// Calls of the batch write, with their sizes.
    let batchWrites = Locked<[Int]>([])
    let failing: Set<Int64>
    init(failing: Set<Int64> = []) { self.failing = failing }

    func deadLetter(_ message: Message, error: any Error, attempts: Int, topic: String) async throws {
        if failing.contains(message.offset) { throw TestFailure(description: "broker refused \(message.offset)") }
        written.withLock { $0.append((message.offset, topic, attempts)) }
    }

    func deadLetter(_ messages: [Message], error: any Error, attempts: Int, topic: String) async -> [(any Error)?] {
        batchWrites.withLock { $0.append(messages.count) }
        var outcomes: [(any Error)?] = []
        for message in messages {
            do {
                try await deadLetter(message, error: error, attempts: attempts, topic: topic)
                outcomes.append(nil)
            } catch {
                outcomes.append(error)
            }
        }
        return outcomes
    }
}

enum PipelineFixture {
    static let logger: Logger = {
        var logger = Logger(label: "sluice.pipeline-test")
        logger.logLevel = .critical
        return logger
    }()

    /// Messages at `offsets`, keyed round-robin over `keys` keys, each with the timestamp `timestampBase` +
    /// its offset.
    static func messages(_ offsets: Range<Int64>, keys: Int = 1, timestampBase: Int64 = 1_700_000_000_000) -> [Message]
    {
        offsets.map { offset in
            Message(
                topic: "t", partition: 0, offset: offset, key: KafkaBytes("k\(offset % Int64(keys))"),
                value: KafkaBytes("\(offset)"), timestampMilliseconds: timestampBase + offset)
        }
    }

    static func pipeline(
        _ configuration: TopicConfiguration,
        handler: AnyHandler,
        flowControl: RecordingFlowControl = RecordingFlowControl(),
        deadLetters: (any DeadLetterSink)? = nil,
        drainTimeout: Duration = .seconds(5),
        // Frozen unless a test moves it: a drain never times out because a loaded machine is slow.
        clock: any HostClock = ManualHostClock(),
        backpressureGrace: Duration = ShardPipeline.defaultBackpressureGrace,
        alreadyDone: Set<Int64> = [],
        quarantine: Quarantine? = nil,
        // Real time: the handler watchdog and the careful gate notice real time passing.
        watchdogClock: any HostClock = SystemHostClock(name: "test-watchdog"),
        carefulGate: CarefulGate? = nil,
        tracer: (any Tracer)? = nil,
        inFlightBytes: (@Sendable () -> Int?)? = nil,
        laneExecutor: (any TaskExecutor)? = nil
    ) -> ShardPipeline {
        ShardPipeline(
            topicPartition: TopicPartition("t", 0), generation: 1, configuration: configuration, handler: handler,
            alreadyDone: alreadyDone, quarantine: quarantine,
            environment: .init(
                clock: clock, watchdogClock: watchdogClock, flowControl: flowControl, deadLetters: deadLetters,
                drainTimeout: drainTimeout, backpressureGrace: backpressureGrace, laneExecutor: laneExecutor,
                carefulGate: carefulGate ?? CarefulGate(clock: watchdogClock), tracer: tracer, consumerGroup: "g",
                inFlightBytes: inFlightBytes, logger: logger))
    }

    /// Runs `pipeline` over `source` while moving `clock` on to each timer due within `step` of it (retry
    /// backoffs, the backpressure grace, batch timeouts), never to one further away (the drain deadline): time
    /// passes only while the pipeline waits for it, however slow the machine.
    static func run<Source: AsyncSequence & Sendable>(
        _ pipeline: ShardPipeline, source: Source, clock: ManualHostClock, step: Duration = .seconds(1)
    ) async -> ShardPipeline.Outcome where Source.Element == [Message], Source.Failure == Never {
        let driver = Task {
            while !Task.isCancelled {
                if let next = clock.nextDeadline, next - clock.now <= step {
                    clock.advance(by: next - clock.now)
                } else {
                    try? await Task.sleep(for: .milliseconds(1))
                }
            }
        }
        defer { driver.cancel() }
        return await pipeline.run(source: source)
    }

    /// A source that yields `batches` and ends.
    static func source(_ batches: [[Message]]) -> AsyncStream<[Message]> {
        AsyncStream { continuation in
            for batch in batches { continuation.yield(batch) }
            continuation.finish()
        }
    }
}
