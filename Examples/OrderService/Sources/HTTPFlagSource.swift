import Foundation
import Sluice

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A flag source of your own: flags from a flag service your team already runs, polled over HTTP.
///
/// Sluice layers it below the group's control plane and above the flag file: an operator's flip through the
/// control topic wins during an incident, and your flag service decides otherwise. The host polls it every
/// `flags.pollInterval`; a failed poll (the service down, an error status, a body that is not a flag map)
/// throws an error naming the URL, and Sluice keeps this source's last good flags in force, never "all on"
/// or "all off".
///
/// The endpoint answers `GET` with a JSON object from flag key to `on`, `off` or a rate:
///
/// ```json
/// {"orders": "off", "orders/3": "on", "payments": "200/s"}
/// ```
///
/// A LaunchDarkly, Unleash or OpenFeature source has the same shape: ask the SDK for the keys, map its
/// answers to ``FlagSetting`` values.
struct HTTPFlagSource: FlagSource {
    /// The endpoint polled.
    let url: URL
    /// How long one poll may take.
    var timeout: TimeInterval = 5
    private let session: URLSession

    var name: String { "http" }
    var changes: AsyncStream<Void>? { nil }

    init(url: URL, timeout: TimeInterval = 5) {
        self.url = url
        self.timeout = timeout
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = timeout
        configuration.requestCachePolicy = .reloadIgnoringLocalAndRemoteCacheData
        session = URLSession(configuration: configuration)
    }

    func load() async throws -> [FlagKey: FlagSetting] {
        var request = URLRequest(url: url, timeoutInterval: timeout)
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await session.data(for: request)
        } catch {
            throw SluiceError(code: .configuration, message: "flag service \(url): \(error.localizedDescription)")
        }
        if let status = (response as? HTTPURLResponse)?.statusCode, status != 200 {
            throw SluiceError(code: .configuration, message: "flag service \(url): HTTP \(status)")
        }
        return try Self.parse(data, from: url)
    }

    /// Reads the flag map; every problem names the URL and the key.
    static func parse(_ data: Data, from url: URL) throws -> [FlagKey: FlagSetting] {
        guard let object = try? JSONSerialization.jsonObject(with: data), let map = object as? [String: Any] else {
            throw SluiceError(
                code: .configuration,
                message: "flag service \(url): expected a JSON object from flag key to on, off or a rate")
        }
        var flags: [FlagKey: FlagSetting] = [:]
        for (keyText, value) in map {
            let key: FlagKey
            do {
                key = try FlagKey(parsing: keyText)
            } catch {
                throw SluiceError(code: .configuration, message: "flag service \(url): key '\(keyText)': \(error)")
            }
            guard let setting = (value as? String).flatMap({ FlagSetting(parsing: $0, source: "http") }) else {
                throw SluiceError(
                    code: .configuration,
                    message:
                        "flag service \(url): flag '\(keyText)': expected on, off or a rate such as 200/s, got \(value)"
                )
            }
            flags[key] = setting
        }
        return flags
    }
}
