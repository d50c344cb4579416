import PropertyBased
import SluiceTesting
import Testing

@testable import Sluice

@Suite("One handler call path and its failure policy", .timeLimit(.minutes(1)))
struct HandlerCallTests {
    @Test("the failure policy retries while its retries allow, each after its backoff, then does what `then` says")
    func failurePolicySteps() {
        let backoff = TopicConfiguration.Backoff(initial: .milliseconds(100), maximum: .seconds(1))
        let policy = TopicConfiguration.FailurePolicy(retries: 3, backoff: backoff, then: .deadLetter)
        #expect(policy.step(afterFailedAttempt: 1) == .retry(after: .milliseconds(100)))
        #expect(policy.step(afterFailedAttempt: 2) == .retry(after: .milliseconds(200)))
        #expect(policy.step(afterFailedAttempt: 3) == .retry(after: .milliseconds(400)))
        #expect(policy.step(afterFailedAttempt: 4) == .deadLetter)
        #expect(TopicConfiguration.FailurePolicy(retries: 0, then: .skip).step(afterFailedAttempt: 1) == .skip)
        #expect(TopicConfiguration.FailurePolicy().step(afterFailedAttempt: 1) == .stop, "the default: no retry, stop")
    }

    @Test(
        "for any policy, attempts 1...retries are retried with delays within the backoff, and only then `then` applies")
    func failurePolicyProperty() async {
        await propertyCheck(input: Gen.int(in: 0...6), Gen.int(in: 1...12), Gen.int(in: 0...2)) {
            retries, attempt, action in
            let then: TopicConfiguration.FailureAction = [.stop, .skip, .deadLetter][action]
            let backoff = TopicConfiguration.Backoff(initial: .milliseconds(10), maximum: .milliseconds(300))
            let step = TopicConfiguration.FailurePolicy(retries: retries, backoff: backoff, then: then).step(
                afterFailedAttempt: attempt)
            if attempt <= retries {
                guard case .retry(let delay) = step else {
                    Issue.record("attempt \(attempt) of \(retries) retries: \(step)")
                    return
                }
                #expect(delay >= .milliseconds(10) && delay <= .milliseconds(300))
            } else {
                let expected: TopicConfiguration.FailurePolicy.Step = [.stop, .skip, .deadLetter][action]
                #expect(step == expected)
            }
        }
    }

    enum Mode: String, CaseIterable, CustomTestStringConvertible {
        case oneAtATime, batches, messagesInBatches
        var testDescription: String { rawValue }
    }

    @Test(
        "every mode calls the handler the same way: a failed call is retried with the next attempt, and counts once as failed",
        arguments: Mode.allCases)
    func everyModeRetries(mode: Mode) async {
        var configuration = TopicConfiguration()
        configuration.onFailure = .init(
            retries: 2, backoff: .init(initial: .milliseconds(1), maximum: .milliseconds(1)), then: .stop)
        if mode != .oneAtATime { configuration.batch = .init(size: 4, timeout: .seconds(1)) }
        // The attempts each call holding offset 5 saw; the first one fails.
        let attempts = Locked<[Int]>([])
        let record: @Sendable ([Message], ShardContext) throws -> Void = { messages, context in
            guard messages.contains(where: { $0.offset == 5 }) else { return }
            let count = attempts.withLock {
                $0.append(context.attempt)
                return $0.count
            }
            if count == 1 { throw TestFailure(description: "first call with 5") }
        }
        let handler: AnyHandler =
            switch mode {
            case .batches: .batch(ClosureBatchHandler { batch, context in try record(batch, context) })
            case .oneAtATime, .messagesInBatches:
                .message(ClosureHandler { message, context in try record([message], context) })
            }
        let clock = ManualHostClock()
        let pipeline = PipelineFixture.pipeline(configuration, handler: handler, clock: clock)
        let outcome = await PipelineFixture.run(
            pipeline, source: PipelineFixture.source([PipelineFixture.messages(0..<12)]), clock: clock)
        #expect(outcome == .sourceEnded(drainTimedOut: false))
        #expect(attempts.value == [1, 2], "attempt 1 failed, attempt 2 succeeded")
        #expect(pipeline.watermark == 12)
        #expect(pipeline.counters == .init(processed: 12, failed: 1, skipped: 0, deadLettered: 0))
    }

    @Test(
        "a call that fails after handlerTimeout was abandoned: the shard crashes at it, the failure policy does not run",
        arguments: Mode.allCases)
    func abandonedFailure(mode: Mode) async {
        var configuration = TopicConfiguration()
        configuration.handlerTimeout = .milliseconds(50)
        configuration.onFailure = .init(retries: 0, then: .skip)
        if mode != .oneAtATime { configuration.batch = .init(size: 4, timeout: .seconds(1)) }
        let slowFailure: @Sendable ([Message]) async throws -> Void = { messages in
            guard messages.contains(where: { $0.offset == 5 }) else { return }
            // Past the timeout on real time (the watchdog's clock), then a failure nobody may act on.
            try? await Task.sleep(for: .milliseconds(300))
            throw TestFailure(description: "late")
        }
        let handler: AnyHandler =
            switch mode {
            case .batches: .batch(ClosureBatchHandler { batch, _ in try await slowFailure(batch) })
            case .oneAtATime, .messagesInBatches:
                .message(ClosureHandler { message, _ in try await slowFailure([message]) })
            }
        let clock = ManualHostClock()
        let pipeline = PipelineFixture.pipeline(configuration, handler: handler, clock: clock)
        let outcome = await PipelineFixture.run(
            pipeline, source: PipelineFixture.source([PipelineFixture.messages(0..<12)]), clock: clock)
        guard case .crashed(let crash) = outcome else {
            Issue.record("expected a crash at the timeout, got \(outcome)")
            return
        }
        #expect(crash.offset == (mode == .oneAtATime ? 5 : 4))
        #expect(pipeline.counters.skipped == 0, "the late failure was not skipped")
        #expect(pipeline.watermark == (mode == .oneAtATime ? 5 : 4))
    }
}
