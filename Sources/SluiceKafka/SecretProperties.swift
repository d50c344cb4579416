/// Which librdkafka property values must never be printed: in an error, a log line or a status page, a value whose
/// property name says password, secret, key, token or credential is replaced. Names are matched loosely, so a
/// mistyped name (`sasl.pasword`, `ssl.key.pasword`) is treated as a secret too: the value is what the user
/// meant to keep secret, whatever the name.
public enum SecretProperties {
    private static let markers = ["pass", "pwd", "secret", "key", "token", "cred", "jaas", "private", "sasl.", "oauth"]

    /// Whether the value of property `name` is kept out of every message.
    public static func isSecret(_ name: String) -> Bool {
        let lowered = name.lowercased()
        return markers.contains { lowered.contains($0) }
    }

    /// How a value is shown in a message: itself, or a placeholder for a secret.
    public static func shown(_ value: String, of name: String) -> String {
        isSecret(name) ? "(not shown)" : "'\(value)'"
    }

    /// `text` with every occurrence of `value` replaced, when `value` is a secret's (librdkafka's own
    /// messages sometimes quote the value).
    public static func scrub(_ text: String, value: String, of name: String) -> String {
        guard isSecret(name), value.count >= 3 else { return text }
        return text.replacing(value, with: "(not shown)")
    }
}
