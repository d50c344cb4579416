import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Sluice
import SluiceAdmin
import SluiceTesting
import Testing

/// Mutation fuzzing of the admin API's request parsing (docs/security.md, "Fuzzing"): flag changes, shard
/// resets and releases, from a seed corpus (`FuzzCorpus/admin.txt`), bodies and paths mutated by
/// ``InputMutator``, sent with the token to a host's router. A request may be refused (4xx) or refused for
/// the host's state (409, 503); it must never trap or answer 500, and the flags it leaves are within bounds.
/// `SLUICE_FUZZ_ITERATIONS` runs longer, `SLUICE_FUZZ_SEED` picks another sequence.
@Suite("Fuzzing the admin API's requests", .timeLimit(.minutes(3)))
struct AdminFuzzTests {
    static let iterations =
        ProcessInfo.processInfo.environment["SLUICE_FUZZ_ITERATIONS"].flatMap(Int.init).map { $0 / 5 } ?? 1_000
    static let seed = ProcessInfo.processInfo.environment["SLUICE_FUZZ_SEED"].flatMap(UInt64.init) ?? 0x5eed

    struct Seed {
        let method: HTTPRequest.Method
        let path: String
        let body: [UInt8]
    }

    static func corpus() throws -> [Seed] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "FuzzCorpus/admin.txt")
        return try String(contentsOf: url, encoding: .utf8).split(separator: "\n").map { line in
            let parts = line.split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false)
            return Seed(
                method: HTTPRequest.Method(String(parts[0]))!, path: String(parts[1]),
                body: Array((parts.count > 2 ? parts[2] : "").utf8))
        }
    }

    @Test("admin requests with mutated bodies and paths: refused or applied within bounds, never a 500 or a trap")
    func adminRequests() async throws {
        let seeds = try Self.corpus()
        let host = AdminFixture.host(stateFile: AdminFixture.stateFile(), topics: ["orders"])
        let app = Application(
            router: try AdminServer(host: host, registry: AdminFixture.registry, logger: AdminFixture.logger)
                .makeRouter())
        var generator = InputMutator.Generator(state: Self.seed)
        let requests = (0..<Self.iterations).map {
            iteration -> (method: HTTPRequest.Method, path: String, body: [UInt8]) in
            let seed = seeds.randomElement(using: &generator)!
            let body = InputMutator.mutate(seed.body, seeds.randomElement(using: &generator)!.body, using: &generator)
            guard iteration % 5 == 0 else { return (seed.method, seed.path, body) }
            // The path too: the mutated bytes percent-encoded, as a client would have to send them.
            let mutated = String(
                decoding: InputMutator.mutate(Array(seed.path.utf8), [], using: &generator), as: UTF8.self)
            return (
                seed.method,
                "/" + (mutated.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? "").drop { $0 == "/" },
                body
            )
        }
        let statuses = try await app.test(.router) { client in
            var statuses: [Int: Int] = [:]
            let bearer: HTTPFields = [.authorization: "Bearer s3cret"]
            for request in requests {
                let status = try await client.execute(
                    uri: request.path, method: request.method, headers: bearer, body: ByteBuffer(bytes: request.body)
                ) { $0.status }
                statuses[status.code, default: 0] += 1
                #expect(
                    status.code < 500 || status == .serviceUnavailable,
                    "\(request.method) \(request.path) \(String(decoding: request.body, as: UTF8.self)): \(status)")
            }
            try await client.execute(uri: "/v1/flags", method: .get, headers: bearer) { response in
                #expect(response.status == .ok, "the server still answers")
            }
            return statuses
        }
        for (key, setting) in host.flags.flags {
            #expect(setting.rate.map { $0 >= 0.001 && $0 <= 1_000_000 } ?? true, "\(key): \(setting)")
            #expect((setting.reason?.utf8.count ?? 0) <= 256, "a reason fits in the body limit")
        }
        #expect(
            (statuses[200] ?? 0) > 0 && statuses.keys.contains { (400..<500).contains($0) },
            "some applied, some refused: \(statuses)")
        print("admin fuzz: \(Self.iterations) requests, statuses \(statuses.sorted { $0.key < $1.key })")
    }
}
