import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Options every admin command takes.
struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: "The host's admin API, e.g. http://127.0.0.1:8080 (environment SLUICE_ADMIN_URL).")
    var admin: String = ProcessInfo.processInfo.environment["SLUICE_ADMIN_URL"] ?? "http://127.0.0.1:8080"

    @Option(name: .long, help: "Bearer token for changes (environment SLUICE_ADMIN_TOKEN).")
    var token: String?

    var resolvedToken: String? { token ?? ProcessInfo.processInfo.environment["SLUICE_ADMIN_TOKEN"] }
}

/// Calls a host's admin API and turns failures into clear messages.
struct AdminClient {
    let options: AdminOptions

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Sends a request; returns the decoded JSON object of a 2xx answer, throws a ``Failure`` naming the
    /// host's error otherwise.
    func call(_ method: String, _ path: String, body: [String: Any]? = nil) async throws -> [String: Any] {
        let data = try await send(method, path, body: body)
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
    }

    /// `GET path`, its answer read as `type` with every field checked (the answer comes from outside the process).
    func get<T: Decodable>(_ path: String, as type: T.Type) async throws -> T {
        let data = try await send("GET", path, body: nil)
        do {
            return try CheckedJSON.decode(type, from: data)
        } catch {
            throw Failure(description: "the host's answer to GET \(path) cannot be read: \(error.detail)")
        }
    }

    /// Sends a request; returns the body of a 2xx answer, throws a ``Failure`` naming the host's error otherwise.
    private func send(_ method: String, _ path: String, body: [String: Any]?) async throws -> Data {
        guard let url = URL(string: options.admin.trimmingCharacters(in: CharacterSet(charactersIn: "/")) + path) else {
            throw Failure(description: "--admin '\(options.admin)' is not a URL")
        }
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.timeoutInterval = 10
        request.setValue("sluice-cli", forHTTPHeaderField: "User-Agent")
        let user = ProcessInfo.processInfo.environment["USER"] ?? "unknown"
        request.setValue(
            "\(user)@\(ProcessInfo.processInfo.hostName) via sluice CLI", forHTTPHeaderField: "X-Sluice-Caller")
        if let token = options.resolvedToken {
            request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        }
        if let body {
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await URLSession.shared.data(for: request)
        } catch {
            throw Failure(
                description: "cannot reach the Sluice admin API at \(options.admin): \(error.localizedDescription)")
        }
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        guard (200..<300).contains(status) else {
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
            let message = object["error"] as? String ?? String(decoding: data.prefix(4_096), as: UTF8.self)
            throw Failure(description: "the host refused (\(status)): \(message)")
        }
        return data
    }
}

/// Runs an admin call and exits non-zero with the message on failure.
func runAdmin(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let failure as AdminClient.Failure {
        FileHandle.standardError.write(Data("sluice: \(failure.description)\n".utf8))
        throw ExitCode(1)
    }
}

/// A flag key in one path segment.
func encode(_ key: String) -> String {
    key.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? key
}
