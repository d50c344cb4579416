import Crypto
import Foundation
import SluiceKafka

/// Who may write a control record (docs/architecture.md, "Trust boundaries").
public enum ControlSigner: String, Codable, Sendable, CaseIterable {
    /// Hosts: heartbeats (`host/`), trips (`trip/`), the quarantines they record, and clearing their suspects.
    case host
    /// Operators: flags (`flag/`), commands (`command/`) and releases of quarantines (skip, dead-letter, retry).
    case `operator`

    /// Who may write a record with this key and value: one role, or both for a released quarantine (an operator's
    /// retry, or a host clearing suspects it handled). Nil for kinds this version does not read.
    public static func allowed(key: String, value: [UInt8]?) -> Set<ControlSigner>? {
        if key.hasPrefix("flag/") || key.hasPrefix("command/") { return [.operator] }
        if key.hasPrefix("host/") || key.hasPrefix("trip/") { return [.host] }
        guard key.hasPrefix("quarantine/") else { return nil }
        guard let value, let state = try? CheckedJSON.decode(ControlRecord.Header.self, from: value).state else {
            return [.host, .operator]
        }
        switch state {
        case "skip", "deadLetter": return [.operator]
        case "released": return [.host, .operator]
        default: return [.host]
        }
    }
}

/// The keys that sign and verify a group's control records: a shared secret for hosts (HMAC-SHA256; every host
/// signs and verifies heartbeats and quarantines) and an Ed25519 key pair for operators. A host verifies operator
/// records with the operator's public key and never needs the private one: the CLI signs (and a host's admin
/// API only when it is given the private key). Keys rotate by listing the previous one beside the current one.
///
/// A record is signed over the control topic, the signer's role, the key and the value, so a signature is not
/// valid on another topic, for another role or for another record. It travels in the record's headers:
/// `sluice.signer` (`host` or `operator`) and `sluice.signature` (base64).
public struct ControlKeys: Sendable {
    /// Host keys, the current first: records are signed with the first and accepted with any.
    public let hostKeys: [SymmetricKey]
    /// Operator public keys, the current first.
    public let operatorPublicKeys: [Curve25519.Signing.PublicKey]
    /// The operator's private key, where operator records are written (the CLI; a host only when configured).
    public let operatorPrivateKey: Curve25519.Signing.PrivateKey?

    /// Header names.
    public static let signerHeader = "sluice.signer"
    public static let signatureHeader = "sluice.signature"

    /// Reads keys as the configuration gives them (base64): host keys of at least 32 bytes, 32-byte Ed25519 keys.
    /// Throws naming the setting that is wrong, never its value.
    public init(hostKeys: [String], operatorPublicKeys: [String], operatorPrivateKey: String?) throws(SluiceError) {
        func decode(_ text: String, _ what: String) throws(SluiceError) -> Data {
            guard let data = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw SluiceError(code: .configuration, message: "\(what) is not base64 (the value is not shown)")
            }
            return data
        }
        var hosts: [SymmetricKey] = []
        for (index, text) in hostKeys.enumerated() {
            let data = try decode(text, index == 0 ? "control.hostKey" : "control.hostKeyPrevious")
            guard data.count >= 32 else {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "\(index == 0 ? "control.hostKey" : "control.hostKeyPrevious") must be at least 32 bytes (base64 of 32 random bytes; `sluice keys generate` makes one)"
                )
            }
            hosts.append(SymmetricKey(data: data))
        }
        var operators: [Curve25519.Signing.PublicKey] = []
        for (index, text) in operatorPublicKeys.enumerated() {
            let what = index == 0 ? "control.operatorPublicKey" : "control.operatorPublicKeyPrevious"
            guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: decode(text, what)) else {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "\(what) is not an Ed25519 public key (base64 of 32 bytes; `sluice keys generate` makes one)")
            }
            operators.append(key)
        }
        var privateKey: Curve25519.Signing.PrivateKey?
        if let operatorPrivateKey {
            guard
                let key = try? Curve25519.Signing.PrivateKey(
                    rawRepresentation: decode(operatorPrivateKey, "the operator key"))
            else {
                throw SluiceError(
                    code: .configuration, message: "the operator key is not an Ed25519 private key (base64 of 32 bytes)"
                )
            }
            privateKey = key
        }
        self.hostKeys = hosts
        self.operatorPublicKeys = operators
        self.operatorPrivateKey = privateKey
    }

    /// What is signed: the topic, the role, the key and the value, each length-prefixed.
    static func signed(topic: String, signer: ControlSigner, key: String, value: [UInt8]?) -> [UInt8] {
        var bytes = Array("sluice-control/1".utf8)
        for part in [Array(topic.utf8), Array(signer.rawValue.utf8), Array(key.utf8), value ?? []] {
            withUnsafeBytes(of: UInt32(part.count).bigEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: part)
        }
        return bytes
    }

    /// The headers that sign a record as `signer`. Throws when this process holds no key for that role.
    public func sign(topic: String, signer: ControlSigner, key: String, value: [UInt8]?) throws(SluiceError)
        -> [KafkaHeader]
    {
        let message = Self.signed(
            topic: topic, signer: signer, key: key, value: value.flatMap { $0.isEmpty ? nil : $0 })
        let signature: [UInt8]
        switch signer {
        case .host:
            guard let hostKey = hostKeys.first else {
                throw SluiceError(
                    code: .configuration, message: "no host key here: host records are signed with control.hostKey")
            }
            signature = Array(HMAC<SHA256>.authenticationCode(for: message, using: hostKey))
        case .operator:
            guard let operatorPrivateKey else {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "no operator key here: flags, commands and releases are signed by an operator (the CLI with SLUICE_CONTROL_OPERATOR_KEY, or a host given control.operatorKey)"
                )
            }
            guard let bytes = try? operatorPrivateKey.signature(for: message) else {
                throw SluiceError(code: .state, message: "the operator key could not sign")
            }
            signature = Array(bytes)
        }
        return [
            KafkaHeader(key: Self.signerHeader, value: Array(signer.rawValue.utf8)),
            KafkaHeader(key: Self.signatureHeader, value: Array(Data(signature).base64EncodedString().utf8)),
        ]
    }

    /// Checks a record's signature; returns who signed it. Throws (reason `signature`) when it is unsigned,
    /// signed by a role that may not write it, or the signature does not verify with any of the keys.
    public func verify(topic: String, key: String, value: [UInt8]?, headers: [KafkaHeader], offset: Int64)
        throws(ControlRecordRejected) -> ControlSigner
    {
        func rejected(_ detail: String) -> ControlRecordRejected {
            ControlRecordRejected(key: key, offset: offset, reason: .signature, detail: detail)
        }
        let signerText = headers.last { $0.key == Self.signerHeader }?.value.map { String(decoding: $0, as: UTF8.self) }
        let signatureText = headers.last { $0.key == Self.signatureHeader }?.value.map {
            String(decoding: $0, as: UTF8.self)
        }
        guard let signerText, let signatureText else {
            throw rejected("unsigned; this group's control records must be signed")
        }
        guard let signer = ControlSigner(rawValue: signerText) else {
            throw rejected("unknown signer '\(signerText.prefix(20))'")
        }
        guard let allowed = ControlSigner.allowed(key: key, value: value), allowed.contains(signer) else {
            throw rejected("a \(signer.rawValue) may not write this record")
        }
        guard signatureText.utf8.count <= 200, let signature = Data(base64Encoded: signatureText) else {
            throw rejected("the signature is not base64")
        }
        let message = Self.signed(
            topic: topic, signer: signer, key: key, value: value.flatMap { $0.isEmpty ? nil : $0 })
        let valid: Bool
        switch signer {
        case .host:
            valid = hostKeys.contains {
                HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: message, using: $0)
            }
        case .operator:
            valid = operatorPublicKeys.contains { $0.isValidSignature(signature, for: message) }
        }
        guard valid else { throw rejected("the \(signer.rawValue) signature does not verify with this group's keys") }
        return signer
    }

    /// Whether this process can verify records (it has the host key and the operator public key).
    public var verifies: Bool { !hostKeys.isEmpty && !operatorPublicKeys.isEmpty }

    /// Keys from the environment, as the CLI takes them: `SLUICE_CONTROL_OPERATOR_KEY` signs, and
    /// `SLUICE_CONTROL_HOST_KEY` with `SLUICE_CONTROL_OPERATOR_PUBLIC_KEY` (and their `_PREVIOUS`) verify what
    /// is read. Nil when none is set.
    public static func fromEnvironment(_ environment: [String: String]) throws(SluiceError) -> ControlKeys? {
        func value(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        let hosts = ["SLUICE_CONTROL_HOST_KEY", "SLUICE_CONTROL_HOST_KEY_PREVIOUS"].compactMap(value)
        let publics = ["SLUICE_CONTROL_OPERATOR_PUBLIC_KEY", "SLUICE_CONTROL_OPERATOR_PUBLIC_KEY_PREVIOUS"].compactMap(
            value)
        let privateKey = value("SLUICE_CONTROL_OPERATOR_KEY")
        guard !hosts.isEmpty || !publics.isEmpty || privateKey != nil else { return nil }
        return try ControlKeys(hostKeys: hosts, operatorPublicKeys: publics, operatorPrivateKey: privateKey)
    }

    /// A new host key and operator key pair, base64, as `sluice keys generate` prints them.
    public static func generate() -> (hostKey: String, operatorKey: String, operatorPublicKey: String) {
        let host = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0).base64EncodedString() }
        let operatorKey = Curve25519.Signing.PrivateKey()
        return (
            host, operatorKey.rawRepresentation.base64EncodedString(),
            operatorKey.publicKey.rawRepresentation.base64EncodedString()
        )
    }
}
