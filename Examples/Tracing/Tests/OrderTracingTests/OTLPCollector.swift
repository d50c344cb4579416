import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// An OpenTelemetry collector's OTLP/HTTP JSON endpoint on loopback, keeping the spans it is sent.
final class OTLPCollector: Sendable {
    /// A received span (ids in hex).
    struct Span: Sendable {
        var name: String
        var kind: Int
        var traceID: String
        var spanID: String
        var parentSpanID: String
        var attributes: [String: String]
    }

    private let channel: any Channel
    private let received = Mutex<[Span]>([])
    let port: Int

    private init(channel: any Channel) {
        self.channel = channel
        port = channel.localAddress?.port ?? 0
    }

    static func start() async throws -> OTLPCollector {
        let box = Mutex<OTLPCollector?>(nil)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(RequestHandler { body in box.withLock { $0 }?.receive(body) })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let collector = OTLPCollector(channel: channel)
        box.withLock { $0 = collector }
        return collector
    }

    var spans: [Span] { received.withLock { $0 } }

    func stop() async throws { try await channel.close() }

    private func receive(_ body: Data) {
        guard let request = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else { return }
        var spans: [Span] = []
        for resource in request["resourceSpans"] as? [[String: Any]] ?? [] {
            for scope in resource["scopeSpans"] as? [[String: Any]] ?? [] {
                for span in scope["spans"] as? [[String: Any]] ?? [] {
                    var attributes: [String: String] = [:]
                    for attribute in span["attributes"] as? [[String: Any]] ?? [] {
                        guard let key = attribute["key"] as? String, let value = attribute["value"] as? [String: Any]
                        else { continue }
                        attributes[key] = value.values.first.map { "\($0)" }
                    }
                    spans.append(
                        Span(
                            name: span["name"] as? String ?? "",
                            kind: (span["kind"] as? Int) ?? 0,
                            traceID: Self.hex(span["traceId"]),
                            spanID: Self.hex(span["spanId"]),
                            parentSpanID: Self.hex(span["parentSpanId"]),
                            attributes: attributes))
                }
            }
        }
        received.withLock { $0.append(contentsOf: spans) }
    }

    /// An id in hex. OTLP/JSON asks for hex; swift-otel writes protobuf's JSON mapping of bytes, base64.
    private static func hex(_ field: Any?) -> String {
        guard let text = field as? String else { return "" }
        if text.count == 32 || text.count == 16, text.allSatisfy(\.isHexDigit) { return text.lowercased() }
        guard let bytes = Data(base64Encoded: text) else { return text }
        return bytes.map { String(format: "%02x", $0) }.joined()
    }
}

private final class RequestHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let onBody: @Sendable (Data) -> Void
    private var body = Data()

    init(onBody: @escaping @Sendable (Data) -> Void) { self.onBody = onBody }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: body = Data()
        case .body(var buffer): body.append(contentsOf: buffer.readBytes(length: buffer.readableBytes) ?? [])
        case .end:
            onBody(body)
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: "2")
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil
            )
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "{}")))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
