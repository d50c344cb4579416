/// The payload `sluice produce` writes: JSON with the key, a per-key sequence number, a global index and
/// the production time, padded to the requested size, so consumers can check per-key order.
///
/// `{"key":"key-17","seq":42,"n":1234,"ts":1700000000000,"pad":"....."}`
struct LoadPayload: Equatable {
    var key: String
    var sequence: Int
    var index: Int
    var timestampMilliseconds: Int64

    func encoded(size: Int) -> [UInt8] {
        var text = "{\"key\":\"\(key)\",\"seq\":\(sequence),\"n\":\(index),\"ts\":\(timestampMilliseconds)"
        let closing = ",\"pad\":\"\"}"
        let padding = max(0, size - text.utf8.count - closing.utf8.count)
        text += ",\"pad\":\"" + String(repeating: "x", count: padding) + "\"}"
        return Array(text.utf8)
    }

    /// Reads a payload written by ``encoded(size:)``; nil for anything else.
    init?(decoding bytes: some Collection<UInt8>) {
        let parsed =
            bytes.withContiguousStorageIfAvailable { Self.parse($0) }
            ?? Array(bytes).withUnsafeBufferPointer { Self.parse($0) }
        guard let parsed else { return nil }
        self = parsed
    }

    private static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> LoadPayload? {
        guard let key = Self.string(bytes, field: "key"), let sequence = Self.number(bytes, field: "seq"),
            let index = Self.number(bytes, field: "n"), let timestamp = Self.number(bytes, field: "ts")
        else { return nil }
        return LoadPayload(key: key, sequence: sequence, index: index, timestampMilliseconds: Int64(timestamp))
    }

    init(key: String, sequence: Int, index: Int, timestampMilliseconds: Int64) {
        self.key = key
        self.sequence = sequence
        self.index = index
        self.timestampMilliseconds = timestampMilliseconds
    }

    private static func find(_ haystack: UnsafeBufferPointer<UInt8>, _ field: String) -> Int? {
        let needle = Array("\"\(field)\":".utf8)
        guard haystack.count >= needle.count else { return nil }
        return needle.withUnsafeBufferPointer { needle in
            outer: for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
                for offset in 1..<needle.count where haystack[start + offset] != needle[offset] { continue outer }
                return start + needle.count
            }
            return nil
        }
    }

    private static func number(_ bytes: UnsafeBufferPointer<UInt8>, field: String) -> Int? {
        guard var position = find(bytes, field) else { return nil }
        var value = 0
        var digits = 0
        while position < bytes.count, (48...57).contains(bytes[position]) {
            value = value * 10 + Int(bytes[position] - 48)
            position += 1
            digits += 1
        }
        return digits > 0 ? value : nil
    }

    private static func string(_ bytes: UnsafeBufferPointer<UInt8>, field: String) -> String? {
        guard var position = find(bytes, field), position < bytes.count, bytes[position] == 34 else { return nil }
        position += 1
        let start = position
        while position < bytes.count, bytes[position] != 34 { position += 1 }
        guard position < bytes.count else { return nil }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }
}
