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
    /// `transactional.id`: makes the producer transactional (``KafkaProducer/initTransactions(timeout:)``). A new
    /// producer with the same id fences the old one: its transaction is aborted and its calls fail. Default nil.
    public var transactionalID: String?
    /// `transaction.timeout.ms`: how long the broker lets a transaction stay open before it aborts it (a producer
    /// that died leaves it open until then, or until a producer with its id starts). Default 60 s.
    public var transactionTimeout: Duration = .seconds(60)
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
            ("enable.idempotence", idempotent || transactionalID != nil ? "true" : "false"),
        ]
        if let transactionalID {
            result += [
                ("transactional.id", transactionalID),
                ("transaction.timeout.ms", String(transactionTimeout.milliseconds)),
            ]
        }
        result += properties.sorted { $0.key < $1.key }
        return result
    }
}
