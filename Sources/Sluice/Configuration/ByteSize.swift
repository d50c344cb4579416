/// Sizes in configuration: a whole or decimal number with a unit, `256MiB`, `1.5GiB`, `512KB`, or a plain
/// number of bytes. Binary units (KiB, MiB, GiB) are powers of 1,024; decimal ones (KB, MB, GB) of 1,000.
enum ByteSize {
    private static let units: [(suffix: String, factor: Double)] = [
        ("kib", 1024), ("mib", 1024 * 1024), ("gib", 1024 * 1024 * 1024),
        ("kb", 1e3), ("mb", 1e6), ("gb", 1e9), ("b", 1),
    ]

    /// The bytes `text` stands for, or nil when it is not a size (or is negative or too large).
    static func parse(_ text: String) -> Int? {
        let lowered = text.trimmingWhitespace().lowercased()
        var number = Substring(lowered)
        var factor = 1.0
        for unit in units where lowered.hasSuffix(unit.suffix) {
            number = lowered.dropLast(unit.suffix.count)
            factor = unit.factor
            break
        }
        guard let value = Double(String(number).trimmingWhitespace()), value.isFinite, value >= 0 else { return nil }
        let bytes = value * factor
        guard bytes < Double(Int.max / 2) else { return nil }
        return Int(bytes)
    }
}
