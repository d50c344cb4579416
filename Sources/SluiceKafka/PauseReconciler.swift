/// Decides the pause and resume calls that bring librdkafka's pause state of one partition to the desired
/// one (docs/architecture.md §5). Pure: the consumer's owner thread asks it and makes the call.
///
/// What librdkafka has paused is tracked per topic-partition *across assignments*: librdkafka (2.0.2 and
/// 2.16 alike, both verified) keeps an application pause across unassign and re-assign, so a partition
/// handed back to the same member can arrive paused. Two rules follow:
///
/// - After an assignment, the desired state is applied explicitly before the first fetch: a partition that
///   should be paused is paused (pausing a paused partition is harmless, and this does not depend on the
///   library clearing or keeping the flag), one that should fetch is resumed if it was left paused.
/// - Otherwise a call is made only when the state changes: a resume of a partition librdkafka does not have
///   paused rewinds it to where it was assigned in librdkafka before 2.4.0.
struct PauseReconciler: Sendable, Equatable {
    /// A call to make on librdkafka.
    enum Call: Sendable, Equatable {
        case pause
        case resume
    }

    /// The partitions librdkafka has paused, as far as this consumer's calls went (kept across assignments).
    private(set) var pausedInLibrdkafka: Set<TopicPartition> = []

    init() {}

    /// The call that makes `topicPartition` paused exactly when `desired` is not empty, or nil.
    /// `afterAssignment` is true for the first reconciliation of a new assignment.
    func call(for topicPartition: TopicPartition, desired: Set<KafkaPauseReason>, afterAssignment: Bool) -> Call? {
        let paused = pausedInLibrdkafka.contains(topicPartition)
        if !desired.isEmpty { return paused && !afterAssignment ? nil : .pause }
        return paused ? .resume : nil
    }

    /// Records a call librdkafka accepted.
    mutating func applied(_ call: Call, to topicPartition: TopicPartition) {
        switch call {
        case .pause: pausedInLibrdkafka.insert(topicPartition)
        case .resume: pausedInLibrdkafka.remove(topicPartition)
        }
    }
}
