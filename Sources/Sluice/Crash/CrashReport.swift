import Foundation

/// The Swift runtime's crash report of a dead process, summarized for a quarantine (docs/architecture.md §12).
///
/// The runtime's backtracer writes it when the process runs with
/// `SWIFT_BACKTRACE=enable=yes,format=json,output-to=DIRECTORY` (the environment is read when the process
/// starts, so the deployment sets it): a file `NAME-PID-....json` per crash. Pointed at the state
/// directory, the next start finds the dead process's report there.
enum CrashReport {
    /// The most a summary keeps.
    static let limit = 2_000

    /// The summary of the report process `pid` left in `directory`, if any.
    static func find(pid: Int64, in directory: String) -> String? {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return nil }
        guard let name = names.filter({ $0.hasSuffix(".json") && $0.contains("-\(pid)-") }).sorted().last,
            let data = FileManager.default.contents(atPath: "\(directory)/\(name)")
        else { return nil }
        return summarize(data)
    }

    /// What happened and the crashed thread's frames (`description (image) file:line`), at most ``limit``
    /// characters; nil when `data` is not a crash report.
    static func summarize(_ data: Data) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            object["kind"] as? String == "crashReport",
            let threads = object["threads"] as? [[String: Any]]
        else { return nil }
        let crashed = threads.first { $0["crashed"] as? Bool == true }
        var lines = ["\(object["description"] as? String ?? "crash") on thread \(crashed?["name"] as? String ?? "?")"]
        for frame in crashed?["frames"] as? [[String: Any]] ?? [] {
            guard let description = frame["description"] as? String else { continue }
            var line = "  \(description)"
            if let image = frame["image"] as? String { line += " (\(image))" }
            if let source = frame["sourceLocation"] as? [String: Any], let file = source["file"] as? String {
                line += " \((file as NSString).lastPathComponent):\(source["line"] as? Int ?? 0)"
            }
            lines.append(line)
        }
        var summary = ""
        for line in lines {
            guard summary.count + line.count + 1 <= limit - 3 else {
                summary += "  …"
                break
            }
            summary += (summary.isEmpty ? "" : "\n") + line
        }
        return summary
    }
}
