import Crypto
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import SluiceTesting
import SwiftASN1
import Synchronization
import X509

/// A certificate authority made for one test and a server certificate it signed for 127.0.0.1, as PEM files
/// in a temporary directory: the CA for librdkafka's `ssl.ca.location`, the server's for ``TLSFront``.
struct TestCertificateAuthority {
    let directory: String
    /// The CA certificate (PEM).
    let caPath: String
    let serverCertificate: NIOSSLCertificate
    let serverKey: NIOSSLPrivateKey

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-ca-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let now = Date()
        let caKey = P256.Signing.PrivateKey()
        let caName = try DistinguishedName { CommonName("Sluice test CA") }
        let ca = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(caKey.publicKey),
            notValidBefore: now - 3_600, notValidAfter: now + 86_400, issuer: caName, subject: caName,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: .init(caKey))
        let serverKey = P256.Signing.PrivateKey()
        let server = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(serverKey.publicKey),
            notValidBefore: now - 3_600, notValidAfter: now + 86_400, issuer: caName,
            subject: try DistinguishedName { CommonName("127.0.0.1") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                // librdkafka checks the broker's address against the certificate (ssl.endpoint.identification.algorithm=https).
                SubjectAlternativeNames([.ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))])
            },
            issuerPrivateKey: .init(caKey))
        caPath = directory + "/ca.pem"
        try ca.serializeAsPEM().pemString.write(toFile: caPath, atomically: true, encoding: .utf8)
        serverCertificate = try NIOSSLCertificate(
            bytes: Array(try server.serializeAsPEM().pemString.utf8), format: .pem)
        self.serverKey = try NIOSSLPrivateKey(bytes: Array(serverKey.pemRepresentation.utf8), format: .pem)
    }
}

/// TLS on a loopback port in front of a plaintext broker: accepts TLS with the test CA's server certificate and
/// forwards the bytes to the broker. tansu 0.6.0's own TLS cannot be switched on (its `--cert` and `--key` are
/// declared as mutually exclusive, and it needs both), so the TLS a client meets is this front's; the broker
/// advertises the front's port (``TansuCluster/Front``), so every connection a client makes goes through it.
final class TLSFront: Sendable {
    let port: Int
    private let server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    private let brokerPort = Mutex<Int?>(nil)
    /// TLS handshakes that failed (a client that does not trust the CA, or speaks plaintext).
    let failedHandshakes = Atomic<Int>(0)

    init(authority: TestCertificateAuthority) async throws {
        let context = try NIOSSLContext(
            configuration: .makeServerConfiguration(
                certificateChain: [.certificate(authority.serverCertificate)],
                privateKey: .privateKey(authority.serverKey)))
        server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        port = server.channel.localAddress?.port ?? 0
        let server = server
        Task { [self] in
            try? await server.executeThenClose { connections in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in connections {
                        group.addTask { await self.forward(connection) }
                    }
                }
            }
        }
    }

    /// The front for ``TansuCluster/start(topics:behind:)``: clients trust the test CA.
    func front(authority: TestCertificateAuthority) -> TansuCluster.Front {
        TansuCluster.Front(
            port: port, clientProperties: ["security.protocol": "ssl", "ssl.ca.location": authority.caPath]
        ) { [self] port in
            brokerPort.withLock { $0 = port }
        }
    }

    func stop() async {
        try? await server.channel.close()
    }

    private func forward(_ client: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        guard let brokerPort = brokerPort.withLock({ $0 }) else { return }
        do {
            let broker = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: brokerPort) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            try await client.executeThenClose { fromClient, toClient in
                try await broker.executeThenClose { fromBroker, toBroker in
                    // Both directions until either side closes; then both close.
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { for try await bytes in fromClient { try await toBroker.write(bytes) } }
                        group.addTask { for try await bytes in fromBroker { try await toClient.write(bytes) } }
                        _ = try await group.next()
                        group.cancelAll()
                    }
                }
            }
        } catch let error as NIOSSLError {
            _ = error
            failedHandshakes.add(1, ordering: .relaxed)
        } catch {
            // A connection that ended with an error: the client sees it closed, as with a broker.
        }
    }
}
