import Logging
import Metrics
import SluiceKafka
import Synchronization
import Tracing

/// The one way the handler is called. Every mode goes through ``call(_:lane:context:startedAt:careful:)``: one
/// message at a time (the fast path, retries, suspects, the messages before a quarantined one) and batches.
/// It marks the lane's activity and journal slot, traces, calls, times the call and checks its timeout.
extension ShardPipeline {
    /// What one handler call is given.
    enum CallInput {
        /// One message.
        case message(Message)
        /// Several: a batch for a ``BatchHandler``, or messages a ``MessageHandler`` gets one after another.
        case unit(ArraySlice<Message>)

        init(_ unit: ArraySlice<Message>) {
            self = unit.count == 1 ? .message(unit.first!) : .unit(unit)
        }

        var first: Message {
            switch self {
            case .message(let message): message
            case .unit(let unit): unit.first!
            }
        }

        /// The first message's offset and timestamp, read without copying the message.
        var firstPosition: (offset: Int64, timestamp: Int64?) {
            switch self {
            case .message(let message): (message.offset, message.timestampMilliseconds)
            case .unit(let unit): (unit[unit.startIndex].offset, unit[unit.startIndex].timestampMilliseconds)
            }
        }

        var count: Int {
            switch self {
            case .message: 1
            case .unit(let unit): unit.count
            }
        }

        var messages: ArraySlice<Message> {
            switch self {
            case .message(let message): [message]
            case .unit(let unit): unit
            }
        }
    }

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
        _ input: CallInput, lane: Int, context: ShardContext, startedAt: Int64, careful: Bool = false
    ) async -> (outcome: CallOutcome, endedAt: Int64) {
        let activity = activities[lane]
        let (firstOffset, firstTimestamp) = input.firstPosition
        activity.begin(firstOffset, timestamp: firstTimestamp, at: startedAt, count: input.count, careful: careful)
        var failure: (any Error)?
        do {
            if let tracing {
                switch input {
                case .message(let message):
                    try await tracing.traced(CollectionOfOne(message), attempt: context.attempt) {
                        try await invoke(input, context: context)
                    }
                case .unit(let unit):
                    try await tracing.traced(unit, attempt: context.attempt) {
                        try await invoke(input, context: context)
                    }
                }
            } else {
                try await invoke(input, context: context)
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
        let pending = activity.completed.withLock { completed in
            switch input {
            case .message(let message): completed.append(message.offset)
            case .unit(let unit): for message in unit { completed.append(message.offset) }
            }
            return completed.count
        }
        activity.end()
        if pending >= 64 { flush(activity) }
        return (.succeeded, endedAt)
    }

    @inline(__always)
    private nonisolated(nonsending) func invoke(_ input: CallInput, context: ShardContext) async throws {
        switch (input, handler) {
        case (.message(let message), .message(let handler)):
            try await handler.handle(message, context: context)
        case (.message(let message), .batch(let handler)):
            try await handler.handle([message], context: context)
        case (.unit(let unit), let handler):
            try await handler.handle(unit, context: context)
        }
    }

    /// Moves a lane's completed offsets into the watermark.
    func flush(_ activity: LaneActivity) {
        let offsets = activity.completed.withLock { completed in
            defer { completed.removeAll(keepingCapacity: true) }
            return completed
        }
        guard !offsets.isEmpty else { return }
        state.withLock { $0.completed(offsets, as: .processed) }
        metrics.processed.increment(by: offsets.count)
        beacon.notify()
        noteProgress()
    }

    func context(attempt: Int) -> ShardContext {
        ShardContext(topicPartition: topicPartition, generation: generation, attempt: attempt, logger: logger)
    }
}
