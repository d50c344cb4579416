import Logging
import SluiceKafka
import Synchronization

/// The host's one producer, for dead letters and handlers' output: created at its first use (a host whose
/// handlers send nothing and whose topics have no dead letters never connects one) and closed with the host.
final class SharedProducer: Sendable {
    private enum State {
        case idle
        case open(KafkaProducer)
        case closed
    }

    private let configuration: KafkaProducerConfiguration
    private let logger: Logger
    private let state = Mutex(State.idle)

    init(configuration: KafkaProducerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// The producer, created now if this is its first use.
    ///
    /// - Throws: ``SluiceError`` with code ``SluiceError/Code/output`` once the host closed it, or when librdkafka
    ///   refuses the producer's configuration.
    func producer() throws(SluiceError) -> KafkaProducer {
        let result = state.withLock { state -> Result<KafkaProducer, SluiceError> in
            switch state {
            case .open(let producer):
                return .success(producer)
            case .closed:
                return .failure(SluiceError(code: .output, message: "the host's producer is closed (the host stopped)"))
            case .idle:
                do {
                    let producer = try KafkaProducer(configuration: configuration, logger: logger)
                    state = .open(producer)
                    return .success(producer)
                } catch {
                    return .failure(SluiceError(code: .output, message: "the host's producer: \(error)"))
                }
            }
        }
        return try result.get()
    }

    /// Waits for outstanding deliveries (up to the producer's flush timeout) and closes the producer; later uses
    /// fail. Safe to call more than once.
    func close() async {
        let producer = state.withLock { state -> KafkaProducer? in
            defer { state = .closed }
            if case .open(let producer) = state { return producer }
            return nil
        }
        await producer?.close()
    }
}
