import Foundation
import SluiceKafka
import SluiceTesting
import Testing

/// A cluster reached over TLS only, with a certificate authority made in the test: every client Sluice creates
/// (the host's consumer, its control plane's reader and writer and topic creation, the CLI's) must get the
/// security properties and verify the broker. tansu behind ``TLSFront`` (the mock cluster listens in plaintext
/// only, and tansu's own TLS cannot be switched on). SASL: neither test broker can show it (docs/development.md,
/// tansu's quirks): the mock has no SASL, and tansu keeps SCRAM users in its storage, which with memory storage (the
/// only one its wheel has) cannot be given users before authentication is required.
@Suite("A cluster reached over TLS", .timeLimit(.minutes(3)))
struct TLSTests {
    @Test(
        "over TLS with the test CA: a host with the control plane handles every order, `sluice produce` and `sluice flags set` reach it; a client that does not trust the CA is refused and says why",
        .enabled(if: TestClusters.isTansu, "tansu behind a TLS front; the mock cluster listens in plaintext only"))
    func everyClientOverTLS() async throws {
        let authority = try TestCertificateAuthority()
        let tls = try await TLSFront(authority: authority)
        let cluster = try await TansuCluster.start(
            topics: ["orders": 4, "payments": 2, "orders.dlq": 1], behind: tls.front(authority: authority))
        let group = "order-service-\(UInt32.random(in: 0...UInt32.max))"
        let client = authority.directory + "/client.properties"
        try "# the test CA\nsecurity.protocol=ssl\nssl.ca.location=\(authority.caPath)\n".write(
            toFile: client, atomically: true, encoding: .utf8)
        let flags = authority.directory + "/flags.yaml"
        try "{}\n".write(toFile: flags, atomically: true, encoding: .utf8)

        let (service, _) = try OrderServiceTests.startService(
            cluster, group: group, environment: ["SLUICE_FLAGS_FILE": flags, "SLUICE_CONTROL_ENABLED": "true"],
            editConfiguration: {
                $0.replacingOccurrences(
                    of: "  commitInterval: 1s\n",
                    with:
                        "  commitInterval: 1s\n  properties:\n    security.protocol: ssl\n    ssl.ca.location: \(authority.caPath)\n"
                )
            })
        #expect(
            await service.errors.waitFor("control plane loaded"),
            "the control plane's reader (and its topic creation) reached the broker")
        let produce = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "orders", "--count", "400", "--keys", "20",
            "--properties-file", client,
        ])
        await produce.expectCleanExit()
        let handled = await eventually(poll: .milliseconds(250)) {
            try await cluster.committedOffsets(group: group, topic: "orders", partitions: 4).values.reduce(0, +) == 400
        }
        #expect(handled, "every order handled and committed over TLS")

        let set = try SluiceProcess([
            "flags", "set", "orders", "off", "--bootstrap", cluster.bootstrapServers, "--group", group,
            "--properties-file", client,
        ])
        #expect(await set.exit() == 0)
        let said = await set.output.all()
        #expect(
            said.contains("; 1/1 hosts applied in "),
            "the CLI wrote over TLS and the host acknowledged over TLS: \(said)")
        #expect(await service.errors.waitFor("sluice.flagSource=control"), "the host applied it")

        // A client that does not trust the test CA: the broker's certificate fails verification.
        let handshakesBefore = tls.failedHandshakes.load(ordering: .relaxed)
        let untrusting = try SluiceProcess([
            "flags", "list", "--bootstrap", cluster.bootstrapServers, "--group", group, "--property",
            "security.protocol=ssl",
        ])
        let status = await untrusting.exit()
        let errors = await untrusting.errors.all() + untrusting.output.all()
        #expect(status != 0, "refused: \(errors)")
        #expect(errors.contains("certificate verify failed"), "the error says why: \(errors)")
        #expect(tls.failedHandshakes.load(ordering: .relaxed) > handshakesBefore)
        print(
            "a client that does not trust the CA: "
                + (errors.split(separator: "\n").first { $0.contains("certificate verify failed") }.map(String.init)
                    ?? errors))

        service.process.terminate()
        #expect(await service.exit() == 0)
        await tls.stop()
    }
}
