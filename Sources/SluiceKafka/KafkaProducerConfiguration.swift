/// Configuration of a ``KafkaProducer``.
///
/// Anything librdkafka understands beyond the typed fields goes in ``properties`` and is validated by
/// librdkafka when the producer is created.
public struct KafkaProducerConfiguration: Sendable {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    public var bootstrapServers: String
    /// `client.id`. Default `sluice-producer`.
    public var clientID: String = "sluice-producer"
    /// `linger.ms`: how long a message may wait for others to fill a batch. Default 5 ms.
    public var linger: Duration = .milliseconds(5)
    /// `enable.idempotence`. Default `true`: no duplicates or reordering on retries.
    public var idempotent: Bool = true
    /// How long ``KafkaProducer/close()`` waits for outstanding deliveries. Default 10 s.
    public var flushTimeout: Duration = .seconds(10)
    /// Raw librdkafka properties, applied after the typed fields.
    public var properties: [String: String] = [:]

    /// Creates a configuration.
    public init(bootstrapServers: String) {
        self.bootstrapServers = bootstrapServers
    }

    func librdkafkaProperties() -> [(String, String)] {
        var result: [(String, String)] = [
            ("bootstrap.servers", bootstrapServers),
            ("client.id", clientID),
            ("linger.ms", String(linger.milliseconds)),
            ("enable.idempotence", idempotent ? "true" : "false"),
        ]
        result += properties.sorted { $0.key < $1.key }
        return result
    }
}
