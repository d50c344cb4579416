import SluiceKafka

/// The headers of a message in a retry topic (`onFailure.then: retryLater`), besides the dead-letter writer's
/// `sluice.error`, `sluice.source.topic`, `sluice.source.partition`, `sluice.source.offset` and `sluice.attempts`
/// (which describe the last failure):
///
/// - `sluice.retry.attempt`: which retry topic it is in (1 for the first delay);
/// - `sluice.retry.due`: when it is due, in milliseconds since the Unix epoch;
/// - `sluice.retry.firstError`: the first failure's error (at most 1,000 characters);
/// - `sluice.retry.origin.topic`, `.partition`, `.offset`: where it was first read.
///
/// They come from outside the process like any record's: a reader checks what it computes with.
enum RetryHeaders {
    static let attempt = "sluice.retry.attempt"
    static let due = "sluice.retry.due"
    static let firstError = "sluice.retry.firstError"
    static let originTopic = "sluice.retry.origin.topic"
    static let originPartition = "sluice.retry.origin.partition"
    static let originOffset = "sluice.retry.origin.offset"
    /// What the dead-letter writer adds for the last failure: a message written on is stripped of them first.
    static let lastWrite: Set<String> = [
        "sluice.error", "sluice.source.topic", "sluice.source.partition", "sluice.source.offset", "sluice.attempts",
        attempt, due,
    ]
    /// The longest first error kept, in characters.
    static let firstErrorLength = 1000

    /// `message` as it goes to the retry topic of `stage` (0 for the first), due at `dueAt`: the headers of its
    /// last write replaced, its origin and first error kept from an earlier retry or taken from it now.
    static func stamped(_ message: Message, error: any Error, stage: Int, dueAt: Int64) -> Message {
        var stamped = withoutLastWrite(message)
        var headers = stamped.headers
        if !headers.contains(where: { $0.key == originTopic }) {
            headers.append(KafkaHeader(key: originTopic, value: Array(message.topic.utf8)))
            headers.append(KafkaHeader(key: originPartition, value: Array(String(message.partition).utf8)))
            headers.append(KafkaHeader(key: originOffset, value: Array(String(message.offset).utf8)))
        }
        if !headers.contains(where: { $0.key == firstError }) {
            let text = String(String(describing: error).prefix(firstErrorLength))
            headers.append(KafkaHeader(key: firstError, value: Array(text.utf8)))
        }
        headers.append(KafkaHeader(key: attempt, value: Array(String(stage + 1).utf8)))
        headers.append(KafkaHeader(key: due, value: Array(String(dueAt).utf8)))
        stamped.headers = headers
        return stamped
    }

    /// `message` without the headers of its last write (``lastWrite``): what goes on to the next retry topic or
    /// the dead-letter topic carries one set, describing the newest failure.
    static func withoutLastWrite(_ message: Message) -> Message {
        guard message.headers.contains(where: { lastWrite.contains($0.key) }) else { return message }
        var stripped = message
        stripped.headers.removeAll { lastWrite.contains($0.key) }
        return stripped
    }

    /// How long `message`, read from a retry topic of `delay`, still waits at wall-clock time `now`: until its
    /// `sluice.retry.due`, never longer than `delay` (a due time further off, from a bad header or a writer's
    /// clock ahead of ours, would hold the partition). Without a readable due time, `delay` after the record's
    /// timestamp, or not at all; `problem` then says what was wrong with the header, for the log.
    static func wait(for message: Message, delay: Duration, now: Int64) -> (wait: Duration, problem: String?) {
        let delayMilliseconds = delay.milliseconds
        var problem: String?
        var dueAt: Int64?
        if let header = message.headers.last(where: { $0.key == due }) {
            let text = String(decoding: header.value ?? [], as: UTF8.self)
            if let value = Int64(text), value >= 0 {
                dueAt = value
            } else {
                problem = "\(due) '\(text.prefix(40))' is not a time in milliseconds since the epoch"
            }
        } else {
            problem = "no \(due) header"
        }
        if dueAt == nil, let timestamp = message.timestampMilliseconds, timestamp >= 0 {
            dueAt = timestamp.addingReportingOverflow(delayMilliseconds).overflow ? nil : timestamp + delayMilliseconds
        }
        guard let dueAt else { return (.zero, problem) }
        // Both are non-negative: the difference cannot overflow.
        let remaining = min(max(dueAt - now, 0), delayMilliseconds)
        return (.milliseconds(remaining), problem)
    }
}
