import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Accepts TCP connections on 127.0.0.1:PORT and forwards each, both ways, to an upstream `host:port`.
///
/// librdkafka 2.0.2's mock binds ephemeral ports only; `sluice dev-broker --port` puts this in front of
/// the first broker so clients can bootstrap from a fixed address. Metadata still advertises the brokers'
/// own loopback ports, which clients then use directly. One thread per connection: a development tool.
final class LoopbackForwarder: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    private let listener: Int32
    private let upstreamHost: String
    private let upstreamPort: UInt16

    init(listenPort: UInt16, upstream: String) throws {
        let parts = upstream.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]) else {
            throw Failure(description: "cannot read broker address '\(upstream)'")
        }
        upstreamHost = String(parts[0])
        upstreamPort = port
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw Failure(description: "socket() failed: errno \(errno)") }
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: listenPort)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(listener, 64) == 0 else {
            let reason = String(cString: strerror(errno))
            close(listener)
            throw Failure(description: "cannot listen on 127.0.0.1:\(listenPort): \(reason)")
        }
    }

    func start() {
        Thread { [self] in
            while true {
                let client = accept(listener, nil, nil)
                if client < 0 { continue }
                Thread { [self] in self.forward(client) }.start()
            }
        }.start()
    }

    private func forward(_ client: Int32) {
        let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = Self.loopback(port: upstreamPort)
        inet_pton(AF_INET, upstreamHost, &address.sin_addr)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        defer {
            close(client)
            close(upstream)
        }
        guard connected == 0 else { return }
        var descriptors = [
            pollfd(fd: client, events: Int16(POLLIN), revents: 0),
            pollfd(fd: upstream, events: Int16(POLLIN), revents: 0),
        ]
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while poll(&descriptors, 2, -1) > 0 {
            for (index, descriptor) in descriptors.enumerated() where descriptor.revents != 0 {
                let from = descriptor.fd
                let to = index == 0 ? upstream : client
                let count = read(from, &buffer, buffer.count)
                if count <= 0 { return }
                var sent = 0
                while sent < count {
                    let written = buffer.withUnsafeBytes { write(to, $0.baseAddress! + sent, count - sent) }
                    if written <= 0 { return }
                    sent += written
                }
            }
        }
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }
}
