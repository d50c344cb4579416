import SluiceKafka

/// Where a handler's records go (``ShardContext/send(_:)``).
///
/// The host's is Sluice's shared producer: ``send(_:)`` returns once the broker acknowledged every record, so a
/// message counts as done only after its output is written (at least once: output written for a message whose
/// offset was not yet committed when its process died is written again by whoever handles it next). A test passes
/// one of its own to see what a handler sends (SluiceTesting's `HandlerHarness` records them).
public protocol OutputSink: Sendable {
    /// Writes `records`, all at once (one round trip per leader), and returns once each one is acknowledged.
    ///
    /// - Throws: the first record's error, once every record's outcome is known: the handler call fails and the
    ///   topic's `onFailure` decides what comes next (a retry writes the records again).
    func send(_ records: [ProducerRecord]) async throws
}

extension ShardContext {
    /// Writes one record to `topic` and returns once the broker acknowledged it (see ``OutputSink``).
    ///
    /// - Throws: ``SluiceError`` with code ``SluiceError/Code/output`` naming the topic when it is not a topic name,
    ///   does not exist, or the write failed; the handler call fails with it.
    public func send(
        topic: String, key: [UInt8]? = nil, value: [UInt8], headers: [KafkaHeader] = [], partition: Int32? = nil
    ) async throws {
        try await send([ProducerRecord(topic: topic, partition: partition, key: key, value: value, headers: headers)])
    }

    /// Writes `records` at once and returns once the broker acknowledged every one (the form for a batch: one round
    /// trip for all of them, not one per record).
    ///
    /// - Throws: ``SluiceError`` with code ``SluiceError/Code/output``: the first failure, once every record's
    ///   outcome is known.
    public func send(_ records: [ProducerRecord]) async throws {
        guard !records.isEmpty else { return }
        guard let output else {
            throw SluiceError(
                code: .output,
                message: "context.send: this shard context has no output (a host gives every shard its producer)")
        }
        try await output.send(records)
    }
}
