import SluiceKafka

extension TopicPartition {
    /// Parses `topic/partition` (a Kafka topic name, a partition 0 or more).
    public init?(parsing text: String) {
        guard let slash = text.lastIndex(of: "/"), let partition = Int32(text[text.index(after: slash)...]),
            partition >= 0
        else { return nil }
        let topic = String(text[..<slash])
        guard TopicName.problem(topic) == nil else { return nil }
        self.init(topic, partition)
    }
}
