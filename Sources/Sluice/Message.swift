import SluiceKafka

/// A message delivered to a handler: the Kafka layer's `ConsumedMessage` (SluiceKafka) itself, so the bytes copied
/// out of librdkafka once are handed to handlers without another copy or conversion.
public typealias Message = ConsumedMessage
