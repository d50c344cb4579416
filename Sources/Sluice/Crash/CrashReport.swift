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

    /// The largest report read (the runtime's are tens of kilobytes).
    static let maximumBytes = 4 << 20

    /// The summary of the report the dead process of `finding` left in `directory`, if any: the first file named
    /// with its PID written after that process started (a PID alone is not the process: every container's first
    /// process is PID 1, and an earlier one's report may still be there). A later process with the same PID
    /// started after this one died, so its report comes after this one's. No upper bound on the time: the
    /// runtime writes the report after the death is recorded, and symbolicating a large binary on a loaded
    /// machine took over a minute. The report used is renamed `….json.used`, so no later death is given it.
    static func find(of finding: CrashFinding, in directory: String) -> String? {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return nil }
        let window = Double(finding.startedAtMilliseconds) / 1000...Date().timeIntervalSince1970
        let candidates = names.filter { $0.hasSuffix(".json") && $0.contains("-\(finding.pid)-") }.compactMap {
            name -> (String, Date)? in
            let path = "\(directory)/\(name)"
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                attributes[.type] as? FileAttributeType == .typeRegular,
                let size = attributes[.size] as? Int, size <= maximumBytes,
                let modified = attributes[.modificationDate] as? Date,
                window.contains(modified.timeIntervalSince1970)
            else { return nil }
            return (path, modified)
        }
        guard let (path, _) = candidates.min(by: { $0.1 < $1.1 }), let data = FileManager.default.contents(atPath: path)
        else { return nil }
        try? FileManager.default.moveItem(atPath: path, toPath: path + ".used")
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
