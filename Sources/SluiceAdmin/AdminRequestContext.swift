import Hummingbird
import NIOCore

/// The admin server's request context: Hummingbird's core context and the connected client's address (login
/// attempts are limited per client).
public struct AdminRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The connected client (a proxy in front of the host, when there is one); nil in router tests.
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// The client's IP address without its port (`unknown` when there is none).
    var client: String { remoteAddress?.ipAddress ?? "unknown" }
}
