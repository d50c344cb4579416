import SluiceKafka

/// What the supervisor loop asks of the group's control plane: how far it applied the control topic, whether it
/// caught up with it, a partition's trip, and operator commands. Behind a protocol so the loop does not depend on
/// the Kafka reader (a test gives it one whose catch-up it holds).
protocol ShardControlState: Sendable {
    /// The control topic's next offset to apply.
    var appliedPosition: Int64 { get }
    /// Reads the control topic to its end as of now; false when that took longer than `timeout`. Waits on the
    /// network: never awaited by the supervisor loop itself.
    func catchUp(timeout: Duration) async -> Bool
    /// The group's trip of `topicPartition`, if it is tripped.
    func trip(for topicPartition: TopicPartition) -> ControlRecord.Trip?
    /// Operator commands at or after `offset`, in order.
    func commands(from offset: Int64) -> [(offset: Int64, command: ControlCommand)]
}

extension ControlPlaneFlagSource: ShardControlState {}
