import Crdkafka

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Owns an `rd_kafka_t` and destroys it exactly once.
///
/// `@unchecked Sendable`: the pointer itself never changes after init, librdkafka's handle is
/// thread-safe for the calls made through it, and which thread may make which call is decided by the
/// owners (``KafkaConsumer`` routes every order-sensitive call through its owner thread).
final class RDKafkaHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    private var destroyed = false

    /// Creates a client of `type` from `properties`; librdkafka validates each property.
    init(type: rd_kafka_type_t, properties: [(String, String)], events: Int32, logger: String) throws(KafkaError) {
        guard let conf = rd_kafka_conf_new() else { throw .configuration("rd_kafka_conf_new failed") }
        var errorBuffer = [CChar](repeating: 0, count: 512)
        for (key, value) in properties {
            let result = rd_kafka_conf_set(conf, key, value, &errorBuffer, errorBuffer.count)
            if result != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                let reason = String(
                    decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                // A name librdkafka does not know is most often a mistyped one: its value may be a secret.
                let unknown = result == RD_KAFKA_CONF_UNKNOWN
                let shown = unknown ? "(not shown)" : SecretProperties.shown(value, of: key)
                let scrubbed =
                    unknown || SecretProperties.isSecret(key)
                    ? SecretProperties.scrub(reason, value: value, of: "secret") : reason
                throw .configuration("librdkafka property '\(key)' = \(shown): \(scrubbed)")
            }
        }
        rd_kafka_conf_set_events(conf, events)
        // Logs go to the main queue as events instead of stderr; the owner forwards them to swift-log.
        rd_kafka_conf_set(conf, "log.queue", "true", &errorBuffer, errorBuffer.count)
        guard let handle = rd_kafka_new(type, conf, &errorBuffer, errorBuffer.count) else {
            // rd_kafka_new frees conf only on success.
            rd_kafka_conf_destroy(conf)
            let reason = String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw .configuration("creating the \(logger) failed: \(reason)")
        }
        self.pointer = handle
        rd_kafka_set_log_queue(handle, nil)
    }

    /// Destroys the handle now, with `flags` for `rd_kafka_destroy_flags`. Must be called once, by the
    /// owner, after every queue obtained from the handle was destroyed.
    func destroy(flags: Int32 = 0) {
        precondition(!destroyed, "RDKafkaHandle destroyed twice")
        destroyed = true
        rd_kafka_destroy_flags(pointer, flags)
    }

    deinit {
        if !destroyed { rd_kafka_destroy(pointer) }
    }
}

/// Builds `rd_kafka_topic_partition_list_t` values and reads them back.
enum TopicPartitionList {
    static func make(_ partitions: [TopicPartition]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        let list = rd_kafka_topic_partition_list_new(Int32(partitions.count))!
        for tp in partitions { rd_kafka_topic_partition_list_add(list, tp.topic, tp.partition) }
        return list
    }

    static func make(_ offsets: [TopicPartitionOffset]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        let list = rd_kafka_topic_partition_list_new(Int32(offsets.count))!
        for item in offsets {
            let element = rd_kafka_topic_partition_list_add(
                list, item.topicPartition.topic, item.topicPartition.partition)!
            element.pointee.offset = item.offset
            if let metadata = item.metadata {
                // librdkafka frees it with the list.
                let bytes = Array(metadata.utf8)
                let copy = malloc(max(bytes.count, 1))!
                bytes.withUnsafeBytes { copy.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
                element.pointee.metadata = copy
                element.pointee.metadata_size = bytes.count
            }
        }
        return list
    }

    static func read(_ list: UnsafePointer<rd_kafka_topic_partition_list_t>) -> [TopicPartitionOffset] {
        var result: [TopicPartitionOffset] = []
        result.reserveCapacity(Int(list.pointee.cnt))
        for index in 0..<Int(list.pointee.cnt) {
            let element = list.pointee.elems[index]
            var metadata: String?
            if let pointer = element.metadata, element.metadata_size > 0 {
                metadata = String(
                    decoding: UnsafeRawBufferPointer(start: pointer, count: element.metadata_size), as: UTF8.self)
            }
            result.append(
                TopicPartitionOffset(
                    TopicPartition(String(cString: element.topic), element.partition), offset: element.offset,
                    metadata: metadata)
            )
        }
        return result
    }

    /// The first per-partition error in `list`, if any.
    static func firstError(_ list: UnsafePointer<rd_kafka_topic_partition_list_t>) -> (
        TopicPartition, rd_kafka_resp_err_t
    )? {
        for index in 0..<Int(list.pointee.cnt) {
            let element = list.pointee.elems[index]
            if element.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                return (TopicPartition(String(cString: element.topic), element.partition), element.err)
            }
        }
        return nil
    }
}
