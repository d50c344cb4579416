import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

@Suite("QuarantineGate", .timeLimit(.minutes(1)))
struct QuarantineGateTests {
    func gate(_ state: Quarantine.State?, offset: Int64 = 5, count: Int = 2) -> QuarantineGate {
        let quarantine = state.map {
            Quarantine(
                offset: offset, count: count, crashes: 1, state: $0, signal: "SIGILL", host: "h", atMilliseconds: 1)
        }
        return QuarantineGate(quarantine: quarantine, carefulGate: CarefulGate(clock: ManualHostClock()))
    }

    @Test(
        "a unit goes the quarantine's way only when it holds one of its offsets, suspects one at a time, the rest as usual"
    )
    func routes() {
        let messages = PipelineFixture.messages(0..<10)
        for state in [Quarantine.State.quarantined, .skip, .deadLetter] {
            let gate = gate(state)
            #expect(gate.route(messages[0..<5]) == .usual, "\(state): 0-4")
            #expect(gate.route(messages[4..<6]) == .quarantined, "\(state): 4-5")
            #expect(gate.route(messages[6..<7]) == .quarantined, "\(state): 6 is the second of two")
            #expect(gate.route(messages[7..<10]) == .usual)
            #expect(gate.holds(5) && gate.holds(6) && !gate.holds(7))
        }
        let suspects = gate(.suspect)
        #expect(suspects.route(messages[4..<6]) == .suspects)
        #expect(suspects.isSuspect(6) && !suspects.isSuspect(7) && !suspects.isQuarantined(5))
        for state in [Quarantine.State.counting, nil] {
            let none = gate(state)
            #expect(none.route(messages[...]) == .usual, "\(String(describing: state)): only counted, or none")
            #expect(!(0..<10).contains { none.holds($0) })
        }
    }

    @Test(
        "a quarantine whose offset now holds another message (the topic was recreated) is set aside: its offsets are usual"
    )
    func setAside() {
        var recorded = Quarantine(
            offset: 5, crashes: 1, state: .quarantined, signal: "SIGILL", host: "h", atMilliseconds: 1)
        recorded.messageTimestamp = 1_700_000_000_005
        let gate = QuarantineGate(quarantine: recorded, carefulGate: CarefulGate(clock: ManualHostClock()))
        let same = PipelineFixture.messages(5..<6)[0]
        #expect(!gate.setAsideIfNotItsMessage(same), "the message it recorded")
        #expect(gate.isQuarantined(5))
        let other = PipelineFixture.messages(5..<6, timestampBase: 1_800_000_000_000)[0]
        #expect(gate.setAsideIfNotItsMessage(other))
        #expect(!gate.isQuarantined(5) && gate.route(PipelineFixture.messages(5..<6)[...]) == .usual)
    }
}
