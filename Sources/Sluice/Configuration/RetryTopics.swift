/// Retry topics: for a topic whose `onFailure.then` is `retryLater`, one topic per delay, named
/// `TOPIC.retry.DELAY` (`orders.retry.30s`), consumed by the host with the topic's handler and settings.
extension TopicConfiguration {
    /// The longest delay of a retry topic. A message waits in its topic for the delay, so the topic's retention
    /// must be longer: the topics a host creates keep 7 days.
    public static let longestRetryDelay: Duration = .seconds(86_400)
    /// The most delays a topic may have.
    public static let mostRetryDelays = 10

    /// The retry topic of `topic` for `delay`: `orders.retry.30s`, `orders.retry.1500ms`, `orders.retry.1h`.
    public static func retryTopic(of topic: String, delay: Duration) -> String {
        "\(topic).retry.\(retryTopicSuffix(delay))"
    }

    /// A delay in its largest whole unit: `30s`, `5m`, `1h`, `1500ms`.
    static func retryTopicSuffix(_ delay: Duration) -> String {
        let milliseconds = delay.milliseconds
        for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000)] where milliseconds % size == 0 {
            return "\(milliseconds / size)\(unit)"
        }
        return "\(milliseconds)ms"
    }

    /// The retry topics of this configuration's topic `topic`, in the order of its delays (none unless
    /// `onFailure.then` is `retryLater`), each with its configuration: this one's, marked with its stage.
    func retryTopics(of topic: String) -> [(name: String, configuration: TopicConfiguration)] {
        guard onFailure.then == .retryLater, retryStage == nil else { return [] }
        return onFailure.delays.enumerated().map { index, delay in
            var stage = self
            stage.retryStage = RetryStage(topic: topic, index: index, delay: delay)
            return (Self.retryTopic(of: topic, delay: delay), stage)
        }
    }

    /// Checks `onFailure.delays`: set exactly when `then` is `retryLater`, each a whole number of milliseconds
    /// between 1 ms and a day, no two alike, and each retry topic's name a valid topic name.
    func validateDelays(topic: String, _ fail: (String, String) -> SluiceError) throws {
        let topic = retryStage?.topic ?? topic
        let delays = onFailure.delays
        guard onFailure.then == .retryLater else {
            if !delays.isEmpty {
                throw fail(
                    "onFailure.delays", "is only used with onFailure.then: retryLater, got then: \(onFailure.then)")
            }
            return
        }
        if delays.isEmpty {
            throw fail("onFailure.delays", "needs at least one delay with onFailure.then: retryLater, e.g. [30s, 5m]")
        }
        if delays.count > Self.mostRetryDelays {
            throw fail("onFailure.delays", "has at most \(Self.mostRetryDelays) delays, got \(delays.count)")
        }
        var names: Set<String> = []
        for delay in delays {
            guard delay >= .milliseconds(1), delay <= Self.longestRetryDelay,
                delay.components.attoseconds % 1_000_000_000_000_000 == 0
            else {
                throw fail(
                    "onFailure.delays",
                    "each delay must be a whole number of milliseconds from 1ms to 24h, got \(delay)")
            }
            let name = Self.retryTopic(of: topic, delay: delay)
            guard names.insert(name).inserted else {
                throw fail("onFailure.delays", "lists \(Self.retryTopicSuffix(delay)) twice")
            }
            if let problem = TopicName.problem(name) {
                throw fail(
                    "onFailure.delays", "its retry topic \(TopicName.quoted(name)) is not a topic name: \(problem)")
            }
        }
    }
}

extension SluiceConfiguration {
    /// This configuration with a topic entry for every retry topic (see ``TopicConfiguration/RetryStage``).
    /// A name already configured as a topic of its own is left as it is; ``SluiceHost`` refuses to run then.
    func withRetryTopics() -> SluiceConfiguration {
        var expanded = self
        for (topic, settings) in topics {
            for (name, stage) in settings.retryTopics(of: topic) where expanded.topics[name] == nil {
                expanded.topics[name] = stage
            }
        }
        return expanded
    }

    /// The retry topics of the configured topics that clash with a topic of the service's own, as
    /// `(topic, retry topic)`.
    var retryTopicClashes: [(topic: String, retryTopic: String)] {
        topics.sorted { $0.key < $1.key }.flatMap { topic, settings in
            settings.retryTopics(of: topic).compactMap { name, stage in
                topics[name].map { $0.retryStage == stage.retryStage } == false ? (topic, name) : nil
            }
        }
    }
}
