import Foundation
import SluiceKafka
import Testing

@testable import Sluice

@Suite("Signed control records: who may write what")
struct ControlSigningTests {
    static let generated = (ControlKeys.generate(), ControlKeys.generate())
    /// What a host holds: the host key and the operator's public key, never the operator's private key.
    static func hostKeys(previous: Bool = false) throws -> ControlKeys {
        let (current, old) = generated
        return try ControlKeys(
            hostKeys: previous ? [current.hostKey, old.hostKey] : [current.hostKey],
            operatorPublicKeys: previous
                ? [current.operatorPublicKey, old.operatorPublicKey] : [current.operatorPublicKey],
            operatorPrivateKey: nil)
    }
    /// What an operator's CLI holds.
    static func operatorKeys(old: Bool = false) throws -> ControlKeys {
        try ControlKeys(
            hostKeys: [], operatorPublicKeys: [],
            operatorPrivateKey: old ? generated.1.operatorKey : generated.0.operatorKey)
    }

    static let flag = ControlRecord.flag(.topic("orders"), enabled: false, reason: "incident", who: "ana").encoded

    @Test("an operator's flag verifies on a host; tampered, moved to another topic or key, or unsigned, it does not")
    func operatorRecords() throws {
        let host = try Self.hostKeys()
        let headers = try Self.operatorKeys().sign(
            topic: "ctl", signer: .operator, key: Self.flag.key, value: Self.flag.value)
        #expect(
            try host.verify(topic: "ctl", key: Self.flag.key, value: Self.flag.value, headers: headers, offset: 1)
                == .operator)
        var tampered = Self.flag.value
        tampered[tampered.count - 2] ^= 1
        for (topic, key, value, hdrs) in [
            ("ctl", Self.flag.key, tampered, headers), ("other-ctl", Self.flag.key, Self.flag.value, headers),
            ("ctl", "flag/payments", Self.flag.value, headers), ("ctl", Self.flag.key, Self.flag.value, []),
        ] {
            let error = #expect(throws: ControlRecordRejected.self) {
                try host.verify(topic: topic, key: key, value: value, headers: hdrs, offset: 2)
            }
            #expect(error?.reason == .signature)
        }
    }

    @Test("a host key signs heartbeats and quarantines, never flags, commands or releases")
    func hostMayNotActAsOperator() throws {
        let host = try Self.hostKeys()
        let heartbeat = ControlRecord.host("pod-1", ControlHostStatus(applied: 3, atMilliseconds: 5, shards: [:]))
            .encoded
        let signed = try host.sign(topic: "ctl", signer: .host, key: heartbeat.key, value: heartbeat.value)
        #expect(
            try host.verify(topic: "ctl", key: heartbeat.key, value: heartbeat.value, headers: signed, offset: 1)
                == .host)
        let quarantined = Quarantine(
            offset: 7, crashes: 1, state: .quarantined, signal: "SIGILL", host: "pod-1", atMilliseconds: 9)
        let skip = try quarantined.released(.skip, offset: 7, who: "ana", reason: nil, of: TopicPartition("orders", 0))
        for record in [Self.flag, ControlRecord.quarantine(TopicPartition("orders", 0), skip).encoded] {
            let forged = try host.sign(topic: "ctl", signer: .host, key: record.key, value: record.value)
            let error = #expect(throws: ControlRecordRejected.self) {
                try host.verify(topic: "ctl", key: record.key, value: record.value, headers: forged, offset: 2)
            }
            #expect(error?.detail == "a host may not write this record")
        }
        // And it holds no operator key to sign as one.
        #expect(throws: SluiceError.self) {
            try host.sign(topic: "ctl", signer: .operator, key: Self.flag.key, value: Self.flag.value)
        }
    }

    @Test("rotation: records signed with the previous keys verify while they are listed, and not after")
    func rotation() throws {
        let signedWithOld = try Self.operatorKeys(old: true).sign(
            topic: "ctl", signer: .operator, key: Self.flag.key, value: Self.flag.value)
        #expect(
            try Self.hostKeys(previous: true).verify(
                topic: "ctl", key: Self.flag.key, value: Self.flag.value, headers: signedWithOld, offset: 1)
                == .operator)
        #expect(throws: ControlRecordRejected.self) {
            try Self.hostKeys().verify(
                topic: "ctl", key: Self.flag.key, value: Self.flag.value, headers: signedWithOld, offset: 1)
        }
    }

    @Test("keys are checked at load: both halves or none, base64 of the right size, and the error never shows a value")
    func configuredKeys() throws {
        var control = SluiceConfiguration.Control()
        #expect(try control.keys() == nil)
        control.hostKey = Self.generated.0.hostKey
        let half = #expect(throws: SluiceError.self) { try control.keys() }
        #expect(half?.message.contains("go together") == true)
        control.operatorPublicKey = "c2hvcnQ="
        let short = #expect(throws: SluiceError.self) { try control.keys() }
        #expect(short?.message.contains("control.operatorPublicKey is not an Ed25519 public key") == true)
        #expect(short?.message.contains("c2hvcnQ=") == false)
        control.operatorPublicKey = Self.generated.0.operatorPublicKey
        control.hostKey = "dG9vIHNob3J0"
        #expect(throws: SluiceError.self) { try control.keys() }
        control.hostKey = Self.generated.0.hostKey
        #expect(try control.keys()?.verifies == true)
    }
}
