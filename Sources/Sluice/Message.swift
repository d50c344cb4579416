import SluiceKafka

/// A message delivered to a handler: the Kafka layer's `ConsumedMessage` (SluiceKafka) itself, so the bytes copied
/// out of librdkafka once are handed to handlers without another copy or conversion.
public typealias Message = ConsumedMessage

/// A record header (`Message.headers`, and what ``ShardContext/send(topic:key:value:headers:partition:)`` writes):
/// SluiceKafka's, so a service that imports only Sluice can name it.
public typealias KafkaHeader = SluiceKafka.KafkaHeader

/// A record a handler writes with ``ShardContext/send(_:)``: SluiceKafka's, named here for a service that imports
/// only Sluice.
public typealias ProducerRecord = SluiceKafka.ProducerRecord
