import Crdkafka

/// A consumer group member's identity for a transaction's offsets (KIP-447): the group, its generation and the
/// member. A transaction committed with it fails once the member left the generation (on a broker that checks),
/// so a consumer that lost its partitions cannot commit them.
public final class KafkaConsumerGroupMetadata: @unchecked Sendable {
    // `@unchecked Sendable`: an immutable librdkafka object, destroyed once in deinit.
    let pointer: OpaquePointer

    init(pointer: OpaquePointer) { self.pointer = pointer }

    deinit { rd_kafka_consumer_group_metadata_destroy(pointer) }
}

extension KafkaConsumer {
    /// The group metadata of this member now (its generation as of the call), for
    /// ``KafkaProducer/sendOffsetsToTransaction(_:group:timeout:)``.
    public func groupMetadata() throws -> KafkaConsumerGroupMetadata {
        try shared.withHandle { handle throws(KafkaError) in
            guard let pointer = rd_kafka_consumer_group_metadata(handle.pointer) else {
                throw KafkaError.state("the consumer has no group metadata (no group.id)")
            }
            return KafkaConsumerGroupMetadata(pointer: pointer)
        }
    }
}

/// Transactions (KIP-98): a producer with ``KafkaProducerConfiguration/transactionalID`` writes records and a
/// consumer group's offsets in one transaction, visible to `read_committed` readers together or not at all.
///
/// The calls follow librdkafka's: ``initTransactions(timeout:)`` once, then per transaction
/// ``beginTransaction()``, records (``enqueue(_:onDelivery:)`` or ``sendAll(_:)``), offsets, and
/// ``commitTransaction(timeout:)`` or ``abortTransaction(timeout:)``. A failure says what to do next:
/// ``KafkaError/requiresAbort`` (abort, then begin again: the transaction's records and offsets are discarded),
/// ``KafkaError/isFatal`` (the producer is unusable, for example fenced by a newer producer with its id: close it),
/// ``KafkaError/isRetriable`` (the same call may be repeated). The blocking calls run on a thread of their own.
extension KafkaProducer {
    /// Registers the transactional id with its coordinator: fences older producers with the id and completes their
    /// open transaction (aborted, or committed when it was being committed). Call once, before the first transaction.
    public func initTransactions(timeout: Duration) async throws {
        try await transactionCall("initializing transactions") { pointer in
            rd_kafka_init_transactions(pointer, Int32(clamping: timeout.milliseconds))
        }
    }

    /// Begins a transaction: records enqueued from now on belong to it.
    public func beginTransaction() throws(KafkaError) {
        if let error = rd_kafka_begin_transaction(handle.pointer) {
            throw KafkaError.consuming(error, context: "beginning a transaction")
        }
    }

    /// Adds consumed `offsets` (each the next offset to read, with optional metadata) to the transaction: they are
    /// committed for `group` when the transaction is, and not otherwise.
    public func sendOffsetsToTransaction(
        _ offsets: [TopicPartitionOffset], group: KafkaConsumerGroupMetadata, timeout: Duration
    ) async throws {
        guard !offsets.isEmpty else { return }
        try await transactionCall("sending offsets to the transaction") { pointer in
            let list = TopicPartitionList.make(offsets)
            defer { rd_kafka_topic_partition_list_destroy(list) }
            return rd_kafka_send_offsets_to_transaction(
                pointer, list, group.pointer, Int32(clamping: timeout.milliseconds))
        }
    }

    /// Flushes the transaction's records and commits it with its offsets.
    public func commitTransaction(timeout: Duration) async throws {
        try await transactionCall("committing the transaction") { pointer in
            rd_kafka_commit_transaction(pointer, Int32(clamping: timeout.milliseconds))
        }
    }

    /// Aborts the transaction: its records are marked aborted (hidden from `read_committed` readers) and its offsets
    /// are not committed. Records not yet delivered fail with a purge error.
    public func abortTransaction(timeout: Duration) async throws {
        try await transactionCall("aborting the transaction") { pointer in
            rd_kafka_abort_transaction(pointer, Int32(clamping: timeout.milliseconds))
        }
    }

    private func transactionCall(
        _ context: String, _ call: @escaping @Sendable (OpaquePointer) -> OpaquePointer?
    ) async throws {
        let handle = self.handle
        try await loop.blocking { () throws(KafkaError) in
            if let error = call(handle.pointer) { throw KafkaError.consuming(error, context: context) }
        }
    }
}
