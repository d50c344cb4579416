import SluiceKafka
import Synchronization

/// What a quarantine (docs/architecture.md §12) asks of the messages of one pipeline: which offsets it holds
/// (quarantined: skipped, dead-lettered or held per the quarantine and `onCrash.then`), which are suspects of an
/// unattributed death (handled one at a time in the process, through the host's careful gate), and whether it
/// was set aside because the message at its offset is not the one it recorded.
final class QuarantineGate: Sendable {
    /// Where a unit of messages goes.
    enum Route: Sendable, Equatable {
        /// Handled as usual.
        case usual
        /// It holds a quarantined message.
        case quarantined
        /// It holds a suspect.
        case suspects
    }

    /// The quarantine of the partition, if any.
    let quarantine: Quarantine?
    /// The offsets the quarantine holds (empty when there is none, or while its deaths are only counted).
    let quarantined: Range<Int64>
    /// Suspects of an unattributed death.
    let suspects: Range<Int64>
    /// The host's gate that lets one suspect at a time into a handler call.
    let carefulGate: CarefulGate
    private let setAside = Atomic<Bool>(false)

    init(quarantine: Quarantine?, carefulGate: CarefulGate) {
        self.quarantine = quarantine
        self.carefulGate = carefulGate
        let holding: Set<Quarantine.State> = [.quarantined, .skip, .deadLetter]
        quarantined = quarantine.map { holding.contains($0.state) ? $0.range : 0..<0 } ?? 0..<0
        suspects = quarantine.map { $0.state == .suspect ? $0.range : 0..<0 } ?? 0..<0
    }

    /// Whether `offset` is held by the quarantine (and it was not set aside).
    func isQuarantined(_ offset: Int64) -> Bool {
        quarantined.contains(offset) && !setAside.load(ordering: .relaxed)
    }

    func isSuspect(_ offset: Int64) -> Bool { suspects.contains(offset) }

    /// Whether the message at `offset` leaves the fast path (one message at a time, no questions asked).
    func holds(_ offset: Int64) -> Bool { isQuarantined(offset) || isSuspect(offset) }

    /// Where `unit` goes: a quarantined message first, then suspects, else as usual.
    func route(_ unit: some Collection<Message>) -> Route {
        if !quarantined.isEmpty, unit.contains(where: { isQuarantined($0.offset) }) { return .quarantined }
        if !suspects.isEmpty, unit.contains(where: { isSuspect($0.offset) }) { return .suspects }
        return .usual
    }

    /// Sets the quarantine aside when `message`, at its offset, is not the message it recorded (the topic was
    /// deleted and recreated): its offsets are then handled as usual. Returns whether it did.
    func setAsideIfNotItsMessage(_ message: Message) -> Bool {
        guard let quarantine, message.offset == quarantine.offset,
            !quarantine.isOfMessage(timestamp: message.timestampMilliseconds)
        else { return false }
        setAside.store(true, ordering: .relaxed)
        return true
    }
}
