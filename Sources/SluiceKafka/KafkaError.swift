import Crdkafka

/// An error raised by the Kafka layer: a librdkafka error, a configuration problem or a misuse.
///
/// `code` is a struct rather than an enum so that adding a code does not break the API.
public struct KafkaError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Kind: String, Hashable, Sendable {
            case configuration
            case librdkafka
            case state
            case timeout
            case closed
            case queueFull
            case unknownPartition
        }

        fileprivate let kind: Kind

        /// A configuration property was unknown or had a bad value.
        public static let configuration = Code(kind: .configuration)
        /// librdkafka reported an error; see ``KafkaError/librdkafkaCode``.
        public static let librdkafka = Code(kind: .librdkafka)
        /// The call does not fit the current state (for example a partition that is not assigned).
        public static let state = Code(kind: .state)
        /// The operation did not finish in time.
        public static let timeout = Code(kind: .timeout)
        /// The client was closed.
        public static let closed = Code(kind: .closed)
        /// librdkafka's local queue is full; try again later.
        public static let queueFull = Code(kind: .queueFull)
        /// The topic or partition does not exist.
        public static let unknownPartition = Code(kind: .unknownPartition)

        public var description: String { kind.rawValue }
    }

    /// What kind of failure this is.
    public let code: Code
    /// A human-readable explanation naming what was wrong.
    public let message: String
    /// librdkafka's numeric error code (`rd_kafka_resp_err_t`), when the error came from librdkafka.
    public let librdkafkaCode: Int32?
    /// Whether librdkafka said a retry may succeed.
    public let isRetriable: Bool
    /// Whether librdkafka said the client instance is unusable.
    public let isFatal: Bool
    /// Whether librdkafka said the current transaction must be aborted (an abortable transaction error): abort it,
    /// then begin a new one.
    public let requiresAbort: Bool
    /// Where the error was raised.
    public let file: String
    /// Where the error was raised.
    public let line: UInt

    /// Creates an error.
    public init(
        code: Code,
        message: String,
        librdkafkaCode: Int32? = nil,
        isRetriable: Bool = false,
        isFatal: Bool = false,
        requiresAbort: Bool = false,
        file: String = #fileID,
        line: UInt = #line
    ) {
        self.code = code
        self.message = message
        self.librdkafkaCode = librdkafkaCode
        self.isRetriable = isRetriable
        self.isFatal = isFatal
        self.requiresAbort = requiresAbort
        self.file = file
        self.line = line
    }

    public var description: String {
        var text = "KafkaError(\(code)): \(message)"
        if let librdkafkaCode { text += " [librdkafka \(librdkafkaCode)]" }
        return text
    }
}

extension KafkaError {
    static func configuration(_ message: String, file: String = #fileID, line: UInt = #line) -> KafkaError {
        KafkaError(code: .configuration, message: message, file: file, line: line)
    }

    static func state(_ message: String, file: String = #fileID, line: UInt = #line) -> KafkaError {
        KafkaError(code: .state, message: message, file: file, line: line)
    }

    static let closedError = KafkaError(code: .closed, message: "the Kafka client is closed")

    /// Wraps a response error code from librdkafka.
    static func rdkafka(
        _ error: rd_kafka_resp_err_t,
        context: String,
        file: String = #fileID,
        line: UInt = #line
    ) -> KafkaError {
        let name = String(cString: rd_kafka_err2str(error))
        let code: Code
        switch error {
        case RD_KAFKA_RESP_ERR__QUEUE_FULL: code = .queueFull
        case RD_KAFKA_RESP_ERR__TIMED_OUT: code = .timeout
        case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION, RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
            code = .unknownPartition
        case RD_KAFKA_RESP_ERR__STATE: code = .state
        default: code = .librdkafka
        }
        return KafkaError(
            code: code,
            message: "\(context): \(name)",
            librdkafkaCode: error.rawValue,
            file: file,
            line: line
        )
    }

    /// Takes ownership of an `rd_kafka_error_t` and destroys it.
    static func consuming(
        _ error: OpaquePointer,
        context: String,
        file: String = #fileID,
        line: UInt = #line
    ) -> KafkaError {
        defer { rd_kafka_error_destroy(error) }
        return KafkaError(
            code: rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR__TIMED_OUT ? .timeout : .librdkafka,
            message: "\(context): \(String(cString: rd_kafka_error_string(error)))",
            librdkafkaCode: rd_kafka_error_code(error).rawValue,
            isRetriable: rd_kafka_error_is_retriable(error) != 0,
            isFatal: rd_kafka_error_is_fatal(error) != 0,
            requiresAbort: rd_kafka_error_txn_requires_abort(error) != 0,
            file: file,
            line: line
        )
    }
}
