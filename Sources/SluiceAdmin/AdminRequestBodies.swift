import Foundation
import Sluice

/// The bodies the admin API reads, each a `Decodable` whose fields are checked as every input from outside the
/// process is: a wrong field is a 400 naming it.
enum AdminRequestBodies {
    /// `PUT /v1/flags/KEY`: `{"enabled": false, "reason": "..."}` or `{"rate": "200/s"}`.
    struct Flag: Decodable {
        var enabled: Bool
        var rate: Double?
        var reason: String?

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: FieldName.self)
            let unknown = Set(fields.allKeys.map(\.stringValue)).subtracting(["enabled", "reason", "rate"])
            guard unknown.isEmpty else {
                throw FieldRefused(
                    .field,
                    "unknown field(s) \(unknown.sorted().joined(separator: ", ")); allowed: enabled, reason, rate")
            }
            // A rate ("200/s", or 200) slows the shards instead of stopping them.
            if fields.contains("rate") {
                let text =
                    (try? fields.decode(String.self, forKey: "rate"))
                    ?? (try? fields.decode(Double.self, forKey: "rate")).map { "\(ControlRecord.describeRate($0))" }
                guard let text, let rate = ControlRecord.parseRate(text) else {
                    throw FieldRefused(
                        .field, "\"rate\" must be messages a second, from 0.001 to 1000000, as 200 or \"200/s\"")
                }
                self.rate = rate
            }
            let enabled = try? fields.boolean("enabled")
            if rate != nil, enabled == false {
                throw FieldRefused(.field, "a rate flag runs the shards it covers: \"enabled\" must be true or absent")
            }
            guard let enabled = rate != nil ? true : enabled else {
                throw FieldRefused(.field, "\"enabled\" (true or false) or \"rate\" is required")
            }
            self.enabled = enabled
            do {
                reason = try fields.text("reason", maxLength: InputLimits.textLength)
            } catch {
                throw FieldRefused(
                    .field, "\"reason\" must be a string of at most \(InputLimits.textLength) characters")
            }
        }
    }

    /// `POST /v1/shards/TOPIC/PARTITION/{skip,dead-letter}`: `{"offset": 42, "reason": "..."}`.
    struct Release: Decodable {
        var offset: Int64
        var reason: String?

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: FieldName.self)
            guard let offset = try fields.integer("offset", in: InputLimits.offsets) else {
                throw FieldRefused(
                    .field, "\"offset\" is required: the quarantined message's offset, as `sluice status` shows it")
            }
            self.offset = offset
            reason = try fields.text("reason", maxLength: InputLimits.textLength)
        }
    }
}
