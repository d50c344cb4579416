extension Duration {
    /// Parses `250ms`, `1s`, `1.5s`, `5m`, `2h` (also `us`). Returns nil for anything else, including a
    /// number without a unit and a duration too long for `Duration` (`1e20s`).
    static func parse(_ text: String) -> Duration? {
        let trimmed = text.trimmingWhitespace()
        let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("s", 1), ("m", 60), ("h", 3600)]
        for (unit, seconds) in units where trimmed.hasSuffix(unit) {
            guard let number = Double(trimmed.dropLast(unit.count)), number >= 0, number.isFinite else { return nil }
            // Past Int64's nanoseconds (292 years) the conversion would trap: such a text is no duration.
            let nanoseconds = (number * seconds * 1e9).rounded()
            guard nanoseconds < 9.2e18 else { return nil }
            return .nanoseconds(Int64(nanoseconds))
        }
        return nil
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var text = Substring(self)
        while let first = text.first, first.isWhitespace { text.removeFirst() }
        while let last = text.last, last.isWhitespace { text.removeLast() }
        return String(text)
    }
}
