import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mustache
import Sluice
import SluiceKafka
import Synchronization

/// Pages rendered from the Mustache templates, redirects, forms, and how values are shown.
extension Dashboard {
    /// Renders `template` within the layout; starts a session (and its cookie) for a browser that has none.
    func page(
        _ request: Request, _ template: String, title: String, status: HTTPResponse.Status = .ok,
        _ body: () -> [String: Any]
    ) -> Response {
        var headers = HTTPFields()
        let session = self.session(of: request)
        if session.isNew { headers[.setCookie] = cookie(session.id, for: request) }
        var context = body()
        context["title"] = title
        context["group"] = host.configuration.kafka.group
        context["identity"] = host.identity
        context["csrf"] = session.csrf
        context["loggedIn"] = token != nil && session.authenticated
        context["needsLogin"] = token != nil && !session.authenticated
        let html = library.render(context, withTemplate: template) ?? "template \(template) missing"
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-store"
        headers[HTTPField.Name("Content-Security-Policy")!] =
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'"
        headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    func redirect(_ location: String) -> Response {
        var headers = HTTPFields()
        headers[.location] = location
        return Response(status: .seeOther, headers: headers)
    }

    /// An `application/x-www-form-urlencoded` body (at most 64 KB).
    func form(_ request: Request) async throws -> [String: String] {
        var request = request
        let body = try await request.collectBody(upTo: 64 * 1024)
        var fields: [String: String] = [:]
        for pair in String(buffer: body).split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String {
                String(text).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(text)
            }
            fields[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return fields
    }

    func caller(_ request: Request) -> String {
        request.headers[.userAgent].map { String($0.prefix(80)) } ?? "unknown"
    }

    static func describe(_ setting: FlagSetting) -> String {
        setting.rate.map(ControlRecord.describeRate) ?? (setting.enabled ? "on" : "off")
    }

    static func age(_ seconds: Int64) -> String {
        seconds < 120 ? "\(seconds) s" : seconds < 7200 ? "\(seconds / 60) min" : "\(seconds / 3600) h"
    }
}
