import Foundation
import SluiceTesting
import Testing

@testable import Sluice

/// Mutation fuzzing of the decoders of outside input (docs/security.md): control records, commit metadata and
/// flag files. Each starts from the seed corpus in `FuzzCorpus/` and mutates it (bit flips, byte and number
/// substitutions with boundary values, insertions, deletions, splices of two seeds), deterministically from a
/// seed, so a finding replays. A decoder may refuse an input; it must not trap (a trap ends the test process),
/// and what it accepts must be within the documented bounds. `SLUICE_FUZZ_ITERATIONS` runs longer (the default
/// keeps `make test` quick); `SLUICE_FUZZ_SEED` picks another sequence.
@Suite("Fuzzing the decoders of outside input")
struct FuzzTests {
    static let iterations = ProcessInfo.processInfo.environment["SLUICE_FUZZ_ITERATIONS"].flatMap(Int.init) ?? 5_000
    static let seed = ProcessInfo.processInfo.environment["SLUICE_FUZZ_SEED"].flatMap(UInt64.init) ?? 0x5eed

    static func corpus(_ name: String) throws -> [String] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "FuzzCorpus/\(name)")
        return try String(contentsOf: url, encoding: .utf8).split(separator: "\n").map(String.init)
    }

    @Test("control records: refused or within bounds, never a trap")
    func controlRecords() throws {
        let seeds = try Self.corpus("control.txt").map { line -> (String, [UInt8]) in
            let parts = line.split(separator: "\t", maxSplits: 1)
            return (String(parts[0]), Array(parts[1].utf8))
        }
        var generator = InputMutator.Generator(state: Self.seed)
        var accepted = 0
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        for iteration in 0..<Self.iterations {
            let (key, value) = seeds.randomElement(using: &generator)!
            let mutated = InputMutator.mutate(value, seeds.randomElement(using: &generator)!.1, using: &generator)
            let mutatedKey =
                iteration % 10 == 0
                ? String(decoding: InputMutator.mutate(Array(key.utf8), [], using: &generator), as: UTF8.self) : key
            _ = AuditEntry(decoding: mutated)
            guard let record = try? ControlRecord.parse(key: mutatedKey, value: mutated, offset: Int64(iteration))
            else { continue }
            accepted += 1
            switch record {
            case .quarantine(_, let quarantine?):
                #expect(
                    InputLimits.offsets.contains(quarantine.offset)
                        && InputLimits.quarantineSpan.contains(Int64(quarantine.count)))
                _ = (quarantine.range, quarantine.summary, quarantine.releaseProblem(over: nil))
            case .host(_, let status?):
                #expect(InputLimits.epochMilliseconds.contains(status.atMilliseconds))
                _ = (status.isLive(now: now, window: 15_000), status.ageSeconds(now: now), status.upSeconds(now: now))
            case .trip(_, let trip?):
                #expect(trip.offset.map { InputLimits.offsets.contains($0) } ?? true)
            default:
                break
            }
        }
        #expect(accepted > 0, "some mutations are still records")
    }

    @Test("commit metadata: refused, or only offsets above the commit and below the high watermark, within the cap")
    func commitMetadata() throws {
        let seeds = try Self.corpus("metadata.txt").map { Array($0.utf8) }
        var generator = InputMutator.Generator(state: Self.seed)
        for _ in 0..<Self.iterations {
            let text = String(
                decoding: InputMutator.mutate(
                    seeds.randomElement(using: &generator)!, seeds.randomElement(using: &generator)!, using: &generator),
                as: UTF8.self)
            let committed = [Int64(0), 100, InputLimits.offsets.upperBound - 5, -1, .max].randomElement(
                using: &generator)!
            let highWatermark = [nil, Int64(0), 110, 10_000, .max].randomElement(using: &generator)!
            guard
                let decoded = try? CommitMetadata.decode(
                    text, committed: committed, highWatermark: highWatermark, maximumDone: 10_000)
            else { continue }
            #expect(decoded.done.count <= 10_000)
            #expect(decoded.done.allSatisfy { $0 > committed && $0 < (highWatermark ?? .max) }, "\(text)")
        }
    }

    @Test("flag files: refused naming the file, or flags with keys and rates in range")
    func flagFiles() throws {
        let seeds = try Self.corpus("flags.txt").map { Array($0.utf8) }
        var generator = InputMutator.Generator(state: Self.seed)
        for _ in 0..<Self.iterations / 4 {
            let text = String(
                decoding: InputMutator.mutate(
                    seeds.randomElement(using: &generator)!, seeds.randomElement(using: &generator)!, using: &generator),
                as: UTF8.self)
            do {
                let flags = try FileFlagSource.parse(text, file: "fuzz.yaml")
                #expect(flags.values.allSatisfy { $0.rate.map { $0 >= 0.001 && $0 <= 1_000_000 } ?? true })
            } catch let error as SluiceError {
                #expect(error.message.contains("fuzz.yaml"), "\(error.message)")
            }
        }
    }
}
