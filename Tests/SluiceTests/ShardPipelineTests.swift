import Dispatch
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

@Suite("ShardPipeline", .timeLimit(.minutes(1)))
struct ShardPipelineTests {
    @Test("partition ordering handles every message once, in offset order, and the watermark reaches the end")
    func partitionOrder() async {
        let seen = Locked<[Int64]>([])
        let pipeline = PipelineFixture.pipeline(
            TopicConfiguration(),
            handler: .message(ClosureHandler { message, _ in seen.withLock { $0.append(message.offset) } }))
        let outcome = await pipeline.run(
            source: PipelineFixture.source([PipelineFixture.messages(0..<50), PipelineFixture.messages(50..<100)]))
        #expect(outcome == .sourceEnded(drainTimedOut: false))
        #expect(seen.value == Array(0..<100))
        #expect(pipeline.watermark == 100)
        #expect(pipeline.counters.processed == 100)
    }

    @Test("key ordering runs keys in parallel and keeps each key's order")
    func keyOrder() async {
        var configuration = TopicConfiguration()
        configuration.ordering = .key
        configuration.processors = 8
        let perKey = Locked<[String: [Int64]]>([:])
        let concurrent = Locked((now: 0, peak: 0))
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { message, _ in
                    concurrent.withLock {
                        $0.now += 1
                        $0.peak = max($0.peak, $0.now)
                    }
                    try await Task.sleep(for: .microseconds(Int.random(in: 0...300)))
                    perKey.withLock { $0[message.keyString!, default: []].append(message.offset) }
                    concurrent.withLock { $0.now -= 1 }
                }))
        let outcome = await pipeline.run(
            source: PipelineFixture.source([PipelineFixture.messages(0..<2_000, keys: 40)]))
        #expect(outcome == .sourceEnded(drainTimedOut: false))
        #expect(pipeline.watermark == 2_000)
        #expect(perKey.value.count == 40)
        for (key, offsets) in perKey.value { #expect(offsets == offsets.sorted(), "\(key) in order") }
        #expect(concurrent.value.peak > 1, "keys ran in parallel")
    }

    @Test(
        "stop: retries wait out their backoff on the host's clock, then the shard crashes at the failing offset and the watermark never passes it"
    )
    func stopPolicy() async {
        var configuration = TopicConfiguration()
        configuration.onFailure = .init(
            retries: 2, backoff: .init(initial: .seconds(1), maximum: .seconds(5)), then: .stop)
        let attempts = Locked(0)
        let clock = ManualHostClock()
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { message, context in
                    if message.offset == 5 {
                        attempts.withLock { $0 = context.attempt }
                        throw TestFailure(description: "bad order 5")
                    }
                }),
            clock: clock)
        let run = Task { await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<20)])) }
        // Each retry waits for its backoff (1 s, then 2 s) and not a moment less.
        for (attempt, backoff) in [(1, Duration.seconds(1)), (2, .seconds(2))] {
            let waiting = await eventually { attempts.value == attempt && clock.nextDeadline == clock.now + backoff }
            #expect(waiting, "attempt \(attempt) failed and its retry waits \(backoff)")
            clock.advance(by: backoff - .milliseconds(1))
            #expect(
                attempts.value == attempt && clock.nextDeadline == clock.now + .milliseconds(1),
                "no retry before the backoff passed")
            clock.advance(by: .milliseconds(1))
        }
        let outcome = await run.value
        guard case .crashed(let crash) = outcome else {
            Issue.record("expected a crash, got \(outcome)")
            return
        }
        #expect(crash.offset == 5)
        #expect(crash.description.contains("bad order 5"))
        #expect(attempts.value == 3, "first try plus two retries")
        #expect(pipeline.watermark == 5)
    }

    @Test("retries: a handler that fails twice then succeeds is processed, nothing skipped")
    func retriesSucceed() async {
        var configuration = TopicConfiguration()
        configuration.onFailure = .init(
            retries: 3, backoff: .init(initial: .milliseconds(1), maximum: .milliseconds(2)), then: .stop)
        let failures = Locked(0)
        let clock = ManualHostClock()
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { message, _ in
                    if message.offset == 2,
                        failures.withLock({
                            $0 += 1
                            return $0
                        }) <= 2
                    {
                        throw TestFailure(description: "flaky")
                    }
                }),
            clock: clock)
        let outcome = await PipelineFixture.run(
            pipeline, source: PipelineFixture.source([PipelineFixture.messages(0..<5)]), clock: clock)
        #expect(outcome == .sourceEnded(drainTimedOut: false))
        #expect(pipeline.watermark == 5)
        #expect(pipeline.counters == .init(processed: 5, failed: 2, skipped: 0, deadLettered: 0))
    }

    @Test("skip and deadLetter commit past the failing message")
    func skipAndDeadLetter() async {
        for action in [TopicConfiguration.FailureAction.skip, .deadLetter] {
            var configuration = TopicConfiguration()
            configuration.onFailure = .init(
                retries: 1, backoff: .init(initial: .milliseconds(1), maximum: .milliseconds(1)), then: action)
            configuration.deadLetterTopic = "t.dlq"
            let deadLetters = RecordingDeadLetters()
            let clock = ManualHostClock()
            let pipeline = PipelineFixture.pipeline(
                configuration,
                handler: .message(
                    ClosureHandler { message, _ in if message.offset % 4 == 1 { throw TestFailure(description: "no") } }
                ),
                deadLetters: deadLetters, clock: clock)
            let outcome = await PipelineFixture.run(
                pipeline, source: PipelineFixture.source([PipelineFixture.messages(0..<8)]), clock: clock)
            #expect(outcome == .sourceEnded(drainTimedOut: false))
            #expect(pipeline.watermark == 8, "\(action)")
            if action == .deadLetter {
                #expect(deadLetters.written.value.map(\.0) == [1, 5])
                #expect(deadLetters.written.value.allSatisfy { $0.1 == "t.dlq" && $0.2 == 2 })
                #expect(pipeline.counters.deadLettered == 2)
            } else {
                #expect(pipeline.counters.skipped == 2)
            }
        }
    }

    @Test("at maxInFlight for longer than the grace, the partition pauses for back-pressure and resumes below half")
    func backpressure() async {
        var configuration = TopicConfiguration()
        configuration.maxInFlight = 4
        configuration.ordering = .none
        configuration.processors = 2
        let flowControl = RecordingFlowControl()
        let clock = ManualHostClock()
        // Handler calls that take real time; the grace passes on the host's clock, moved while the dispatcher
        // waits for room.
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(ClosureHandler { _, _ in try await Task.sleep(for: .milliseconds(100)) }),
            flowControl: flowControl, clock: clock, backpressureGrace: .milliseconds(10))
        let outcome = await PipelineFixture.run(
            pipeline, source: PipelineFixture.source([PipelineFixture.messages(0..<12)]), clock: clock)
        #expect(outcome == .sourceEnded(drainTimedOut: false))
        let calls = flowControl.calls.value
        #expect(calls.first == "pause")
        #expect(calls.count >= 2, "it resumed below half: \(calls)")
        // A level, stated only when it changes: pause and resume alternate (the supervisor drops a pause
        // left at the end together with the pipeline).
        #expect(zip(calls, calls.dropFirst()).allSatisfy { $0 != $1 }, "\(calls)")
        #expect(pipeline.watermark == 12)
    }

    @Test(
        "large messages: no more in flight than the shard's byte share holds, far below maxInFlight; every message handled"
    )
    func inFlightByteShare() async {
        var configuration = TopicConfiguration()
        configuration.ordering = .none
        configuration.processors = 8
        let messages = (0..<40).map { offset in
            Message(
                topic: "t", partition: 0, offset: Int64(offset),
                value: KafkaBytes([UInt8](repeating: 1, count: 64 << 10)))
        }
        let footprint = messages[0].memoryFootprint
        let concurrency = Locked((now: 0, most: 0))
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { _, _ in
                    concurrency.withLock {
                        $0.now += 1
                        $0.most = max($0.most, $0.now)
                    }
                    try await Task.sleep(for: .milliseconds(5))
                    concurrency.withLock { $0.now -= 1 }
                }),
            inFlightBytes: { 4 * footprint })
        #expect(configuration.maxInFlight == 1_000)
        #expect(
            await pipeline.run(
                source: PipelineFixture.source(stride(from: 0, to: 40, by: 10).map { Array(messages[$0..<$0 + 10]) }))
                == .sourceEnded(drainTimedOut: false))
        #expect(pipeline.watermark == 40)
        #expect(concurrency.value.most <= 4, "at most 4 x 64 KiB in flight; 8 processors would take 8")
        #expect(concurrency.value.most >= 2, "the share is used: more than one at a time")
    }

    @Test("brief waits for room under maxInFlight do not pause the partition")
    func briefBackpressureDoesNotPause() async {
        var configuration = TopicConfiguration()
        configuration.maxInFlight = 10
        configuration.ordering = .none
        configuration.processors = 2
        let flowControl = RecordingFlowControl()
        let pipeline = PipelineFixture.pipeline(
            configuration, handler: .message(ClosureHandler { _, _ in try await Task.sleep(for: .milliseconds(1)) }),
            flowControl: flowControl, backpressureGrace: .seconds(30))
        #expect(
            await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<100)]))
                == .sourceEnded(drainTimedOut: false))
        #expect(flowControl.calls.value == [], "room freed within the grace every time: no pause")
        #expect(pipeline.watermark == 100)
    }

    @Test("batching hands full batches, and a partial one once the batch timeout passed on the host's clock")
    func batching() async {
        var configuration = TopicConfiguration()
        configuration.batch = .init(size: 5, timeout: .milliseconds(50))
        let sizes = Locked<[Int]>([])
        let clock = ManualHostClock()
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .batch(ClosureBatchHandler { batch, _ in sizes.withLock { $0.append(batch.count) } }), clock: clock
        )
        let (source, continuation) = AsyncStream.makeStream(of: [Message].self)
        continuation.yield(PipelineFixture.messages(0..<12))
        let run = Task { await pipeline.run(source: source) }
        #expect(
            await eventually { sizes.value == [5, 5] && clock.nextDeadline == clock.now + .milliseconds(50) },
            "two full batches; two messages wait")
        clock.advance(by: .milliseconds(49))
        #expect(sizes.value == [5, 5], "not before the timeout")
        clock.advance(by: .milliseconds(1))
        #expect(await eventually { sizes.value == [5, 5, 2] }, "the partial batch once the timeout passed")
        continuation.finish()
        #expect(await run.value == .sourceEnded(drainTimedOut: false))
        #expect(pipeline.watermark == 12)
    }

    @Test("a handler stuck past handlerTimeout crashes the shard at its offset, even if it ignores cancellation")
    func handlerTimeout() async {
        var configuration = TopicConfiguration()
        configuration.handlerTimeout = .milliseconds(200)
        let hung = Locked<CheckedContinuation<Void, Never>?>(nil)
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { message, _ in
                    if message.offset == 3 {
                        // Awaits an answer that never comes while the pipeline runs, and ignores cancellation, as a
                        // call to a hung dependency would (without occupying a thread of the cooperative pool).
                        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                            hung.withLock { $0 = continuation }
                        }
                    }
                }))
        // Only the watchdog can end this run: the hung call returns after the pipeline did.
        let outcome = await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<10)]))
        #expect(outcome == .crashed(ShardCrash(reason: .handlerTimeout(.milliseconds(200)), offset: 3)))
        #expect(pipeline.watermark == 3)
        hung.withLock { $0?.resume() }
    }

    @Test("a partition rewound under the pipeline does not hand the same offsets out twice")
    func rewoundSource() async {
        let seen = Locked<[Int64]>([])
        let pipeline = PipelineFixture.pipeline(
            TopicConfiguration(),
            handler: .message(ClosureHandler { message, _ in seen.withLock { $0.append(message.offset) } }))
        let outcome = await pipeline.run(
            source: PipelineFixture.source([PipelineFixture.messages(0..<10), PipelineFixture.messages(5..<15)]))
        #expect(outcome == .sourceEnded(drainTimedOut: false))
        #expect(seen.value == Array(0..<15))
        #expect(pipeline.watermark == 15)
    }

    @Test("requestStop starts nothing more: only the handler call already running finishes")
    func stopDrains() async {
        let (source, continuation) = AsyncStream.makeStream(of: [Message].self)
        continuation.yield(PipelineFixture.messages(0..<5))
        let started = Locked<[Int64]>([])
        let release = Locked(false)
        let pipeline = PipelineFixture.pipeline(
            TopicConfiguration(),
            handler: .message(
                ClosureHandler { message, _ in
                    started.withLock { $0.append(message.offset) }
                    while !release.value { try? await Task.sleep(for: .milliseconds(1)) }
                }))
        async let outcome = pipeline.run(source: source)
        while started.value.isEmpty { try? await Task.sleep(for: .milliseconds(1)) }
        pipeline.requestStop()
        continuation.yield(PipelineFixture.messages(5..<10))
        release.withLock { $0 = true }
        #expect(await outcome == .stopped(drainTimedOut: false))
        #expect(started.value == [0], "the four queued behind the running call were not started")
        #expect(pipeline.watermark == 1, "the call that was running completed; nothing past it is done")
        continuation.finish()
    }

    @Test(
        "a source that ends while a handler call cannot finish: once drainTimeout passes on the host's clock, the run says so and nothing past that message is committed"
    )
    func sourceEndedDrainTimedOut() async {
        let clock = ManualHostClock()
        let started = Locked<[Int64]>([])
        let release = Locked(false)
        let pipeline = PipelineFixture.pipeline(
            TopicConfiguration(),
            handler: .message(
                ClosureHandler { message, _ in
                    started.withLock { $0.append(message.offset) }
                    while message.offset == 2, !release.value { try? await Task.sleep(for: .milliseconds(1)) }
                }),
            drainTimeout: .seconds(5), clock: clock)
        let run = Task { await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<5)])) }
        while !started.value.contains(2) { try? await Task.sleep(for: .milliseconds(1)) }
        // Real time alone never ends the drain: only the host's clock does, once the source ended and the drain
        // deadline is set.
        #expect(await eventually { clock.nextDeadline == clock.now + .seconds(5) }, "the drain waits for its deadline")
        clock.advance(by: .seconds(5) - .milliseconds(1))
        #expect(clock.sleeping == 1, "not before the deadline")
        clock.advance(by: .milliseconds(1))
        let outcome = await run.value
        release.withLock { $0 = true }
        #expect(outcome == .sourceEnded(drainTimedOut: true), "not reported as a drain that finished")
        #expect(started.value == [0, 1, 2], "the messages behind the stuck call were not started")
        #expect(pipeline.watermark == 2, "offsets 2-4 are left for the next reader of the partition")
        #expect(pipeline.counters.processed == 2)
    }

    @Test("requestStop during retries makes no further attempt, and the message stays uncommitted")
    func stopEndsRetries() async {
        var configuration = TopicConfiguration()
        configuration.onFailure = .init(
            retries: 5, backoff: .init(initial: .seconds(600), maximum: .seconds(600)), then: .skip)
        let attempts = Locked(0)
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { _, _ in
                    attempts.withLock { $0 += 1 }
                    throw TestFailure(description: "always")
                }))
        let (source, continuation) = AsyncStream.makeStream(of: [Message].self)
        continuation.yield(PipelineFixture.messages(0..<3))
        async let outcome = pipeline.run(source: source)
        while attempts.value == 0 { try? await Task.sleep(for: .milliseconds(1)) }
        pipeline.requestStop()
        #expect(await outcome == .stopped(drainTimedOut: false), "the 600 s backoff ended with the stop")
        #expect(attempts.value == 1)
        #expect(pipeline.watermark == nil || pipeline.watermark == 0)
        continuation.finish()
    }

    @Test(
        "a dead-letter write that hangs is watched like a handler: the shard crashes at handlerTimeout, nothing committed"
    )
    func hungDeadLetterWrite() async {
        var configuration = TopicConfiguration()
        configuration.handlerTimeout = .milliseconds(200)
        configuration.onFailure = .init(retries: 0, then: .deadLetter)
        configuration.deadLetterTopic = "t.dlq"
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { message, _ in
                    if message.offset == 2 { throw TestFailure(description: "bad") }
                }),
            deadLetters: HangingDeadLetters())
        let outcome = await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<5)]))
        #expect(outcome == .crashed(ShardCrash(reason: .handlerTimeout(.milliseconds(200)), offset: 2)))
        #expect(pipeline.watermark == 2, "the message being dead-lettered is not committed")
    }
}

@Suite("Dead-lettering batches", .timeLimit(.minutes(1)))
struct DeadLetterBatchTests {
    static func configuration() -> TopicConfiguration {
        var configuration = TopicConfiguration()
        configuration.batch = .init(size: 4, timeout: .milliseconds(50))
        configuration.onFailure = .init(retries: 0, then: .deadLetter)
        configuration.deadLetterTopic = "t.dlq"
        return configuration
    }

    static let failingBatch = AnyHandler.batch(
        ClosureBatchHandler { _, _ in throw TestFailure(description: "cannot store the batch") })

    @Test("a failed batch is dead-lettered in one write, not one per message")
    func oneWrite() async {
        let deadLetters = RecordingDeadLetters()
        let pipeline = PipelineFixture.pipeline(
            Self.configuration(), handler: Self.failingBatch, deadLetters: deadLetters)
        let outcome = await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<4)]))
        #expect(outcome == .sourceEnded(drainTimedOut: false))
        #expect(deadLetters.batchWrites.value == [4])
        #expect(deadLetters.written.value.map(\.0) == [0, 1, 2, 3])
        #expect(pipeline.watermark == 4)
    }

    @Test(
        "a batch written in part crashes at the first message not written, and the restart writes only that one again")
    func partialFailureNoDoubleWrite() async {
        let first = RecordingDeadLetters(failing: [2])
        let pipeline = PipelineFixture.pipeline(Self.configuration(), handler: Self.failingBatch, deadLetters: first)
        let outcome = await pipeline.run(source: PipelineFixture.source([PipelineFixture.messages(0..<4)]))
        guard case .crashed(let crash) = outcome else {
            Issue.record("expected a crash, got \(outcome)")
            return
        }
        #expect(crash.offset == 2)
        #expect(crash.description.contains("dead-letter write failed at offset 2"))
        #expect(first.written.value.map(\.0) == [0, 1, 3])
        #expect(pipeline.watermark == 2, "nothing from the unwritten message on is committed")
        #expect(pipeline.completedAboveWatermark == [3])
        // The restart reads from the watermark; what was written above it is not written again.
        let second = RecordingDeadLetters()
        let restarted = PipelineFixture.pipeline(
            Self.configuration(), handler: Self.failingBatch, deadLetters: second,
            alreadyDone: pipeline.completedAboveWatermark)
        #expect(
            await restarted.run(source: PipelineFixture.source([PipelineFixture.messages(2..<4)]))
                == .sourceEnded(drainTimedOut: false))
        #expect(second.written.value.map(\.0) == [2])
        #expect(restarted.watermark == 4)
    }
}

/// A dead-letter sink whose writes never complete while the test runs.
final class HangingDeadLetters: DeadLetterSink {
    func deadLetter(_ message: Message, error: any Error, attempts: Int, topic: String) async throws {
        while true { try await Task.sleep(for: .seconds(3_600)) }
    }
}

@Suite("Rate flags", .timeLimit(.minutes(1)))
struct RateLimitTests {
    @Test("the token bucket lets a tenth of a second's worth out at once, then one token per 1/rate seconds")
    func tokenBucket() {
        let start = ContinuousClock.now
        var bucket = TokenBucket(rate: 100, now: start)
        #expect(bucket.take(15, now: start).taken == 10, "a burst of a tenth of a second")
        let empty = bucket.take(1, now: start)
        #expect(empty.taken == 0)
        #expect(empty.nextAt == start + .milliseconds(10))
        #expect(bucket.take(10, now: start + .milliseconds(50)).taken == 5)
        #expect(bucket.take(100, now: start + .seconds(10)).taken == 10, "never more than the burst")
        var slow = TokenBucket(rate: 0.5, now: start)
        #expect(slow.take(3, now: start).taken == 1, "at least one message of burst")
        #expect(slow.take(1, now: start).nextAt == start + .seconds(2))
    }

    @Test("a rate limit holds the pipeline to it on the host's clock, and lifting it lets the rest through at once")
    func pipelineThrottled() async throws {
        let handled = HandledMessages()
        let clock = ManualHostClock()
        let pipeline = PipelineFixture.pipeline(
            TopicConfiguration(), handler: .message(ClosureHandler { message, _ in handled.append(message) }),
            clock: clock)
        pipeline.setRate(1)  // one message now, the next a second later
        let source = AsyncStream<[Message]>.makeStream()
        source.continuation.yield(PipelineFixture.messages(0..<5))
        let running = Task { await pipeline.run(source: source.stream) }
        try await waitUntil("the first message through") { handled.count == 1 }
        #expect(await eventually { clock.nextDeadline == clock.now + .seconds(1) }, "the next token comes in a second")
        clock.advance(by: .milliseconds(999))
        #expect(handled.count == 1, "the others wait for tokens")
        clock.advance(by: .milliseconds(1))
        try await waitUntil("the second message a second later") { handled.count == 2 }
        pipeline.setRate(nil)
        try await waitUntil("the rest through once the limit is lifted") { handled.count == 5 }
        source.continuation.finish()
        #expect(await running.value == .sourceEnded(drainTimedOut: false))
    }
}

/// Resumes the caller from one of Dispatch's threads, and says which thread that was.
private func resumedFromDispatch() async -> String {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(returning: RuntimeTests.threadName()) }
    }
}

extension ShardPipelineTests {
    /// Handlers must run on the host's handler threads (a handler that blocks its thread holds one of Sluice's
    /// threads, not one of Swift's few), also after they awaited something that ran elsewhere; and the lane's
    /// own code between calls must not move to Swift's pool either.
    @Test(
        "handler calls, and what the handler does after an await elsewhere, run on the lanes' executor",
        arguments: [
            TopicConfiguration.Ordering.partition, .key,
        ])
    func handlersStayOnLaneThreads(ordering: TopicConfiguration.Ordering) async {
        let executor = ThreadPoolExecutor(
            name: "test-lanes", threads: 2, maximumThreads: 2, blockedAfter: .seconds(60), clock: SystemHostClock())
        defer { executor.shutdown() }
        var configuration = TopicConfiguration()
        configuration.ordering = ordering
        configuration.processors = 4
        let threads = Locked<(handler: Set<String>, visited: Set<String>)>(([], []))
        let pipeline = PipelineFixture.pipeline(
            configuration,
            handler: .message(
                ClosureHandler { message, _ in
                    let before = RuntimeTests.threadName()
                    let visited = message.offset % 10 == 0 ? await resumedFromDispatch() : nil
                    if message.offset % 7 == 0 { await Task.yield() }
                    let after = RuntimeTests.threadName()
                    threads.withLock { threads in
                        threads.handler.formUnion([before, after])
                        if let visited { threads.visited.insert(visited) }
                    }
                }),
            laneExecutor: executor)
        let outcome = await pipeline.run(
            source: PipelineFixture.source([
                PipelineFixture.messages(0..<300, keys: 20), PipelineFixture.messages(300..<600, keys: 20),
            ]))
        #expect(outcome == .sourceEnded(drainTimedOut: false))
        #expect(pipeline.counters.processed == 600)
        #expect(!threads.value.handler.isEmpty)
        #expect(
            threads.value.handler.allSatisfy { $0.hasPrefix("test-lanes-") },
            "handler ran on \(threads.value.handler.sorted())")
        // What resumed the handler ran on another thread: the handler really waited on something elsewhere.
        #expect(!threads.value.visited.isEmpty && !threads.value.visited.contains { $0.hasPrefix("test-lanes-") })
    }
}
