import Foundation
import Logging
import Metrics
import SluiceKafka
import Synchronization

/// An operator command in the control topic.
public struct ControlCommand: Equatable, Sendable {
    /// What the command does.
    public enum Action: String, Sendable {
        /// A tripped or backing-off shard starts now with a clean history (the admin API's reset, group-wide).
        case reset
    }

    /// What to do.
    public var action: Action
    /// The shard it applies to.
    public var topicPartition: TopicPartition
    /// The operator, kept with the record.
    public var who: String?

    /// Creates a command.
    public init(action: Action, topicPartition: TopicPartition, who: String?) {
        self.action = action
        self.topicPartition = topicPartition
        self.who = who
    }
}
