import Foundation

/// Deterministic mutation fuzzing of decoders of outside input (control records, commit metadata, files,
/// request bodies; a handler's own message format too): start from seed inputs and mutate them with bit flips,
/// byte and number substitutions with boundary values (2⁶³−1, 1e300, NaN), insertions, deletions, splices of
/// two seeds and repeated fields. The same generator state gives the same inputs, so a finding replays.
/// A decoder may refuse an input; it must not trap, and what it accepts must be within its bounds.
public enum InputMutator {
    /// A small deterministic generator (SplitMix64): the same seed gives the same inputs.
    public struct Generator: RandomNumberGenerator, Sendable {
        public var state: UInt64

        public init(state: UInt64) { self.state = state }

        public mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
    }

    /// Values that break arithmetic and decoders: overflow edges, huge and tiny floats, other JSON types.
    public static let boundaries = [
        "0", "-1", "1", "9223372036854775807", "-9223372036854775808", "9223372036854775808", "18446744073709551615",
        "1e300", "-1e300",
        "1.5", "true", "null", "\"\"", "[]", "{}", "4611686018427387904", "4611686018427387905", "2147483648", "NaN",
        "1e-300",
    ]

    /// One mutation of `input`, spliced with `other` sometimes.
    public static func mutate(_ input: [UInt8], _ other: [UInt8], using generator: inout Generator) -> [UInt8] {
        var bytes = input
        for _ in 0..<Int.random(in: 1...4, using: &generator) {
            switch Int.random(in: 0..<7, using: &generator) {
            case 0 where !bytes.isEmpty:
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] ^=
                    1 << UInt8.random(in: 0..<8, using: &generator)
            case 1 where !bytes.isEmpty:
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            case 2:
                // A number (or any JSON token) replaced by a boundary value.
                let text = String(decoding: bytes, as: UTF8.self)
                let numbers = text.ranges(of: #/-?[0-9][0-9.e+-]*|true|false|null/#)
                if let range = numbers.randomElement(using: &generator) {
                    bytes = Array(
                        text.replacingCharacters(in: range, with: boundaries.randomElement(using: &generator)!).utf8)
                }
            case 3:
                let at = Int.random(in: 0...bytes.count, using: &generator)
                bytes.insert(contentsOf: Array(boundaries.randomElement(using: &generator)!.utf8), at: at)
            case 4 where !bytes.isEmpty:
                let start = Int.random(in: 0..<bytes.count, using: &generator)
                bytes.removeSubrange(start..<min(bytes.count, start + Int.random(in: 1...8, using: &generator)))
            case 5 where !other.isEmpty && !bytes.isEmpty:
                let cut = Int.random(in: 0..<bytes.count, using: &generator)
                let from = Int.random(in: 0..<other.count, using: &generator)
                bytes = Array(bytes[..<cut]) + Array(other[from...])
            case 6 where !bytes.isEmpty:
                // A field repeated many times (long strings, deep or wide structures).
                let start = Int.random(in: 0..<bytes.count, using: &generator)
                let piece = bytes[start..<min(bytes.count, start + 16)]
                bytes.insert(
                    contentsOf: Array(repeating: Array(piece), count: Int.random(in: 2...300, using: &generator))
                        .joined(), at: start)
            default:
                break
            }
        }
        return bytes
    }
}
