import SluiceKafka

/// The error a quarantined message is dead-lettered with: its handler call killed the process.
public struct MessageKilledProcess: Error, Sendable, CustomStringConvertible {
    /// The quarantine the message is under.
    public let quarantine: Quarantine
    /// `quarantined: ` and the quarantine's summary (the `sluice.error` header).
    public var description: String { "quarantined: \(quarantine.summary)" }
}
