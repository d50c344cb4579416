import Foundation
import Testing

/// `sluice bench --instructions` as a developer runs it: raw librdkafka and the host under valgrind's callgrind
/// (scripts/ensure-valgrind.sh installs it for `make test`).
@Suite("sluice bench --instructions", .timeLimit(.minutes(15)))
struct BenchInstructionsTests {
    /// A row of the table: case, total, spread, then one column per owner, then the ratio against raw.
    struct Row {
        var total: Double
        var owners: [Double]
        var ratio: String
    }

    static func rows(_ output: String) -> [String: Row] {
        var rows: [String: Row] = [:]
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count == 10, ["a1", "b"].contains(fields[0]), let total = Double(fields[1]) else { continue }
            // fields: case total spread "%" Sluice librdkafka Swift-runtime libc other ratio
            rows[String(fields[0])] = Row(
                total: total, owners: fields[4...8].compactMap { Double($0) }, ratio: String(fields[9]))
        }
        return rows
    }

    @Test("instructions per message for the raw loop and the host, by owner, over two runs each")
    func rawAndHost() async throws {
        let bench = try SluiceProcess([
            "bench", "--instructions", "--only", "a1,b", "--runs", "2", "--partitions", "4", "--messages", "400",
        ])
        let status = await bench.exit(timeout: .seconds(600))
        let output = await bench.output.all()
        #expect(status == 0, "\(bench.errors.text.suffix(3000))")
        let rows = Self.rows(output)
        let raw = try #require(rows["a1"], "no row for a1 in:\n\(output)")
        let host = try #require(rows["b"], "no row for b in:\n\(output)")
        #expect(raw.ratio == "1.000")
        for row in [raw, host] {
            #expect(row.owners.count == 5)
            // The owners' columns (rounded) add up to the total.
            #expect(abs(row.owners.reduce(0, +) - row.total) <= 5)
            // Both read every message through librdkafka.
            #expect(row.owners[1] > 0)
        }
        // The host's pipeline runs in the executable; the raw loop's own code there is a few calls a message.
        #expect(host.owners[0] > raw.owners[0])
        #expect(output.contains("instruction ratios: b/a="))
        #expect(bench.errors.text.contains("a1 run 2:"))
        #expect(bench.errors.text.contains("b run 2:"))
    }

    @Test("without valgrind on the PATH it says what to install")
    func withoutValgrind() async throws {
        let bench = try SluiceProcess(
            ["bench", "--instructions", "--only", "a1", "--runs", "1"], environment: ["PATH": "/nonexistent"])
        let status = await bench.exit()
        #expect(status != 0)
        #expect(bench.errors.text.contains("--instructions needs valgrind on the PATH"))
    }
}
