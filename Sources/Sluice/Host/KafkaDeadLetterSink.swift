import SluiceKafka

/// Writes failed messages to a dead-letter topic with the original key, value and headers, plus:
/// `sluice.error`, `sluice.source.topic`, `sluice.source.partition`, `sluice.source.offset` and
/// `sluice.attempts`. Returns once the broker acknowledged the write.
struct KafkaDeadLetterSink: DeadLetterSink {
    let producer: KafkaProducer

    func deadLetter(_ message: Message, error: any Error, attempts: Int, topic: String) async throws {
        var headers = message.headers
        headers.append(KafkaHeader(key: "sluice.error", value: Array(String(describing: error).utf8)))
        headers.append(KafkaHeader(key: "sluice.source.topic", value: Array(message.topic.utf8)))
        headers.append(KafkaHeader(key: "sluice.source.partition", value: Array(String(message.partition).utf8)))
        headers.append(KafkaHeader(key: "sluice.source.offset", value: Array(String(message.offset).utf8)))
        headers.append(KafkaHeader(key: "sluice.attempts", value: Array(String(attempts).utf8)))
        _ = try await producer.send(ProducerRecord(topic: topic, key: message.key.map { Array($0) }, value: Array(message.value), headers: headers))
    }
}
