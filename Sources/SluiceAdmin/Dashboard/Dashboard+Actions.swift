import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mustache
import Sluice
import SluiceKafka
import Synchronization

/// Operator actions from the dashboard: previewed, confirmed, carried out, their result shown.
extension Dashboard {
    /// The fields of an action form.
    struct ActionRequest {
        var action: String
        var target: String
        var value: String
        var offset: Int64?
        var reason: String
    }

    func action(_ request: Request, confirm: Bool) async throws -> Response {
        let form = try await self.form(request)
        if let refusal = refuseAction(request, form) { return refusal }
        let input = ActionRequest(
            action: form["action"] ?? "", target: (form["target"] ?? "").trimmingCharacters(in: .whitespaces),
            value: form["value"] ?? "",
            offset: form["offset"].flatMap { Int64($0) },
            reason: (form["reason"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines))
        func fail(_ message: String, _ status: HTTPResponse.Status = .badRequest) -> Response {
            page(request, "message", title: "Not done", status: status) { ["message": message, "back": true] }
        }
        guard !input.reason.isEmpty else {
            return fail("say why: every change is kept in the audit log with its reason")
        }
        var context: [String: Any] = [
            "action": input.action, "target": input.target, "value": input.value,
            "offset": input.offset.map(String.init) ?? "",
            "reason": input.reason,
        ]
        let who = "\(session(of: request).name ?? (bearerValid(request) ? "token holder" : "anonymous")) via dashboard"
        switch input.action {
        case "flag":
            let key: FlagKey
            do {
                key = try FlagKey(parsing: input.target)
            } catch {
                return fail((error as? SluiceError)?.message ?? "\(error)")
            }
            let rate = ControlRecord.parseRate(input.value)
            guard ["on", "off", "unset"].contains(input.value) || rate != nil else {
                return fail("the value must be on, off, unset or a rate such as 200/s, got '\(input.value)'")
            }
            let enabled: Bool? = input.value == "unset" ? nil : (rate != nil ? true : input.value == "on")
            context["description"] = "set flag \(key) to \(input.value)"
            guard confirm else {
                let changes = GroupView(host: host).preview(key, enabled: enabled, rate: rate)
                context["changes"] = changes.map {
                    [
                        "shard": $0.shard.topicPartition.description, "owner": $0.shard.owner, "state": $0.shard.state,
                        "change": $0.change,
                    ]
                }
                context["changeCount"] = changes.filter(\.changes).count
                return page(request, "preview", title: "Confirm") { context }
            }
            do throws(OperatorActions.Refusal) {
                let offset = try await actions.setFlag(
                    key, enabled: enabled, rate: rate, reason: input.reason, who: who)
                return await result(request, context, offset: offset)
            } catch {
                return fail(error.message, .conflict)
            }
        case "reset", "skip", "deadLetter":
            guard let topicPartition = TopicPartition(parsing: input.target) else {
                return fail("a shard is TOPIC/PARTITION, got '\(input.target)'")
            }
            context["description"] =
                [
                    "reset": "reset \(topicPartition) (a quarantined message on it is tried again)",
                    "skip":
                        "skip the quarantined message at offset \(input.offset.map(String.init) ?? "?") of \(topicPartition): committed, never handled",
                    "deadLetter":
                        "dead-letter the quarantined message at offset \(input.offset.map(String.init) ?? "?") of \(topicPartition)",
                ][input.action]
            guard confirm else {
                let view = GroupView(host: host)
                context["changes"] = view.shards.filter { $0.topicPartition == topicPartition }.map {
                    [
                        "shard": $0.topicPartition.description, "owner": $0.owner, "state": $0.state,
                        "change": input.action == "reset" ? "start again now" : "release the message, then go on",
                    ]
                }
                context["changeCount"] = (context["changes"] as? [Any])?.count ?? 0
                return page(request, "preview", title: "Confirm") { context }
            }
            do throws(OperatorActions.Refusal) {
                if input.action == "reset" {
                    let (_, offset) = try await actions.reset(topicPartition, who: who)
                    return await result(request, context, offset: offset)
                }
                guard let offset = input.offset else { return fail("the quarantined message's offset is missing") }
                try await actions.release(
                    topicPartition, as: input.action == "skip" ? .skip : .deadLetter, offset: offset, who: who,
                    reason: input.reason)
                return await result(request, context, offset: nil)
            } catch {
                return fail(error.message, .conflict)
            }
        default:
            return fail("unknown action '\(input.action)'")
        }
    }

    /// The result of a change: which hosts applied it (with the control plane, waiting up to 10 s for every
    /// live host's record to say so).
    func result(_ request: Request, _ context: [String: Any], offset: Int64?) async -> Response {
        // The change is in the audit topic now: the next audit page reads it, not the last read.
        await audit.invalidate()
        var context = context
        if let offset, let control = host.control {
            let deadline = ContinuousClock.now + .seconds(10)
            var rows: [[String: Any]] = []
            while true {
                let now = Int64(Date().timeIntervalSince1970 * 1000)
                let live = control.hosts.filter { $0.value.isLive(now: now, window: GroupView.liveMilliseconds) }
                rows = live.sorted { $0.key < $1.key }.map { ["host": $0.key, "applied": $0.value.applied > offset] }
                if rows.allSatisfy({ $0["applied"] as? Bool == true }) || ContinuousClock.now >= deadline { break }
                try? await Task.sleep(for: .milliseconds(50))
            }
            context["acknowledgements"] = rows
            context["appliedCount"] = rows.filter { $0["applied"] as? Bool == true }.count
            context["hostCount"] = rows.count
            context["controlOffset"] = offset
        } else {
            context["local"] = true
        }
        return page(request, "result", title: "Done") { context }
    }
}
