import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// What one handler call is given: one message (the fast path) or several (a batch for a ``BatchHandler``, or
/// messages a ``MessageHandler`` gets one after another, in order). A protocol rather than an enum: the call
/// is specialized for each, so the fast path hands its message on without wrapping or copying it.
protocol HandlerCallInput: Sendable {
    /// The first message's offset and timestamp.
    var firstPosition: (offset: Int64, timestamp: Int64?) { get }
    var count: Int { get }
    /// The last message's offset.
    var lastOffset: Int64 { get }
    /// The messages, for the failure policy's dead-letter write and skip.
    var messages: ArraySlice<Message> { get }
    /// Appends the messages' offsets to `offsets`.
    func appendOffsets(to offsets: inout [Int64])
    /// Records the messages as completed in the lane's crash journal slot; false when one did not fit its window.
    func recordCompleted(in journal: JournalSlot) -> Bool
    /// Calls `handler` with the messages.
    nonisolated(nonsending) func handle(by handler: AnyHandler, context: ShardContext) async throws
    /// Runs `body` in the call's span.
    func traced(by tracing: MessageTracing, attempt: Int, _ body: () async throws -> Void) async throws
}

extension Message: HandlerCallInput {
    var firstPosition: (offset: Int64, timestamp: Int64?) { (offset, timestampMilliseconds) }
    var count: Int { 1 }
    var lastOffset: Int64 { offset }
    var messages: ArraySlice<Message> { [self] }

    func appendOffsets(to offsets: inout [Int64]) { offsets.append(offset) }

    func recordCompleted(in journal: JournalSlot) -> Bool { journal.completed(offset) }

    @inline(__always)
    nonisolated(nonsending) func handle(by handler: AnyHandler, context: ShardContext) async throws {
        switch handler {
        case .message(let handler): try await handler.handle(self, context: context)
        case .batch(let handler): try await handler.handle([self], context: context)
        }
    }

    func traced(by tracing: MessageTracing, attempt: Int, _ body: () async throws -> Void) async throws {
        try await tracing.traced(CollectionOfOne(self), attempt: attempt, body)
    }
}

extension ArraySlice<Message>: HandlerCallInput {
    var firstPosition: (offset: Int64, timestamp: Int64?) {
        (self[startIndex].offset, self[startIndex].timestampMilliseconds)
    }
    var messages: ArraySlice<Message> { self }
    var lastOffset: Int64 { self[index(before: endIndex)].offset }

    func appendOffsets(to offsets: inout [Int64]) { for message in self { offsets.append(message.offset) } }

    func recordCompleted(in journal: JournalSlot) -> Bool {
        var recorded = true
        for message in self where !journal.completed(message.offset) { recorded = false }
        return recorded
    }

    nonisolated(nonsending) func handle(by handler: AnyHandler, context: ShardContext) async throws {
        try await handler.handle(self, context: context)
    }

    func traced(by tracing: MessageTracing, attempt: Int, _ body: () async throws -> Void) async throws {
        try await tracing.traced(self, attempt: attempt, body)
    }
}

/// The one way the handler is called. Every mode goes through ``call(_:by:lane:context:startedAt:careful:)``: one
/// message at a time (the fast path) and units of messages (the slow path, retries, suspects, the messages before
/// a quarantined one, batches). It marks the lane's activity and journal slot, traces, calls, times the call and
/// checks its timeout.
extension ShardPipeline {
    /// What a handler call came to.
    enum CallOutcome {
        /// It returned in time. Its offsets are in the lane's completions: the caller's ``flush(_:)`` moves
        /// them into the watermark (the call does once 64 are pending).
        case succeeded
        /// It threw in time: the failure policy decides what comes next.
        case failed(any Error)
        /// It ran past `handlerTimeout`, or its task was cancelled: what it did does not count (the watchdog
        /// crashed the shard; the message is not committed here).
        case abandoned
    }

    /// Calls the handler with `input`, started at `startedAt` (``MonotonicNanoseconds``), and returns what the
    /// call came to and when it ended: a call's end is the next call's start, one clock read per message.
    ///
    /// A call that succeeded in time counts even after another lane crashed the shard (a restart skips it),
    /// and is recorded before the lane shows idle: a pipeline that ends once its lanes are idle flushes it.
    ///
    /// On the caller's executor (`nonisolated(nonsending)`: a lane calls it once a message, and a hop to the
    /// global executor and back for each cost a task switch) and inlined into the lanes' loops (no async frame
    /// of its own per message).
    @inline(__always)
    nonisolated(nonsending) func call(
        _ input: some HandlerCallInput, by handler: AnyHandler, lane: Int, context: ShardContext, startedAt: Int64,
        careful: Bool = false
    ) async -> (outcome: CallOutcome, endedAt: Int64) {
        let activity = activities[lane]
        let (firstOffset, firstTimestamp) = input.firstPosition
        activity.begin(firstOffset, timestamp: firstTimestamp, at: startedAt, count: input.count, careful: careful)
        var failure: (any Error)?
        // Exactly-once output: the call's records, kept if it succeeds in time.
        let callOutput = transactionalOutput == nil ? nil : CallOutput()
        do {
            if let callOutput, let transactionalOutput {
                try await invoke(
                    input, by: handler, context: context.with(output: transactionalOutput.bound(to: callOutput)))
            } else {
                try await invoke(input, by: handler, context: context)
            }
        } catch {
            failure = error
        }
        let endedAt = MonotonicNanoseconds.now()
        let took = endedAt - startedAt
        metrics.handlerDuration.recordNanoseconds(took)
        if Task.isCancelled || took > watchdog.timeoutNanoseconds {
            activity.end()
            return (.abandoned, endedAt)
        }
        if let failure {
            activity.end()
            return (.failed(failure), endedAt)
        }
        // Held before the offsets count as done: a commit whose watermark passes them takes their records.
        if let callOutput { transaction?.hold(callOutput.take(), through: input.lastOffset) }
        var pending = activity.completed.withLock { completed in
            input.appendOffsets(to: &completed)
            return completed.count
        }
        // In the crash journal too, until handed over: a successor of a process that dies now skips them.
        if let journal = activity.journal, !input.recordCompleted(in: journal) { pending = .max }
        activity.end()
        if pending >= 64 { flush(activity) }
        return (.succeeded, endedAt)
    }

    /// The handler call itself, traced when tracing is on.
    @inline(__always)
    nonisolated(nonsending) func invoke(_ input: some HandlerCallInput, by handler: AnyHandler, context: ShardContext)
        async throws
    {
        if let tracing {
            try await input.traced(by: tracing, attempt: context.attempt) {
                try await input.handle(by: handler, context: context)
            }
        } else {
            try await input.handle(by: handler, context: context)
        }
    }

    /// Moves a lane's completed offsets into the watermark.
    func flush(_ activity: LaneActivity) {
        let offsets = activity.completed.withLock { completed in
            defer { completed.removeAll(keepingCapacity: true) }
            return completed
        }
        guard !offsets.isEmpty else { return }
        let watermark = state.withLock { state in
            state.completed(offsets, as: .processed)
            return state.watermark
        }
        metrics.processed.increment(by: offsets.count)
        beacon.notify()
        noteProgress(watermark, done: offsets)
        // In the progress file now.
        activity.journal?.clearCompleted()
    }

    func context(attempt: Int) -> ShardContext {
        ShardContext(
            topicPartition: topicPartition, generation: generation, attempt: attempt, logger: logger, output: output)
    }
}
