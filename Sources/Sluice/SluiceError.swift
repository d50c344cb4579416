/// An error a user of Sluice can cause: configuration, registration, or a host that cannot start.
public struct SluiceError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of error.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate let name: String
        /// The configuration is invalid.
        public static let configuration = Code(name: "configuration")
        /// Handlers and topics do not match.
        public static let registration = Code(name: "registration")
        /// The host is in a state that does not allow the call.
        public static let state = Code(name: "state")
        /// Data read from outside (commit metadata, a control record) is malformed.
        public static let invalidInput = Code(name: "invalidInput")
        /// A handler's output (``ShardContext/send(_:)``) could not be written.
        public static let output = Code(name: "output")
        public var description: String { name }
    }

    /// What kind of error.
    public let code: Code
    /// What was wrong and where (file, key path, topic).
    public let message: String

    /// Creates an error.
    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "SluiceError(\(code)): \(message)" }
}
