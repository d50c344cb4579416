/// Prometheus texts of several processes merged into one exposition, for a supervisor's `/metrics` that covers
/// its workers (docs/architecture.md §14): each metric family once, with the HELP and TYPE lines of the first
/// text that has it, and the samples of every text under it, a worker's with a `worker` label.
enum WorkerMetrics {
    /// Merges `texts` (the supervisor's own first, with no label): a text's samples keep their order.
    static func merge(_ texts: [(worker: Int?, text: String)]) -> String {
        var order: [String] = []
        var families: [String: (headers: [Substring], samples: [String])] = [:]
        for (worker, text) in texts {
            var family: String?
            var headersSeen: Set<String> = []
            for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
                if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
                    let name = String(line.dropFirst(7).prefix { $0 != " " })
                    family = name
                    if families[name] == nil {
                        order.append(name)
                        families[name] = ([], [])
                    }
                    // The first text's header lines of a family; later texts' are the same family's.
                    let kind = String(line.prefix(6))
                    if !headersSeen.contains(name + kind),
                        !families[name]!.headers.contains(where: { $0.hasPrefix(kind) })
                    {
                        families[name]!.headers.append(line)
                    }
                    headersSeen.insert(name + kind)
                    continue
                }
                if line.hasPrefix("#") { continue }
                let name = String(line.prefix { $0 != "{" && $0 != " " })
                // A sample belongs to the family declared before it (a histogram's _bucket, _sum and _count too).
                let owner = family.flatMap { name.hasPrefix($0) ? $0 : nil } ?? name
                if families[owner] == nil {
                    order.append(owner)
                    families[owner] = ([], [])
                }
                families[owner]!.samples.append(worker.map { labelled(line, name: name, worker: $0) } ?? String(line))
            }
        }
        var result = ""
        for name in order {
            let family = families[name]!
            for header in family.headers { result += header + "\n" }
            for sample in family.samples { result += sample + "\n" }
        }
        return result
    }

    /// `sample` with `worker="N"` first among its labels.
    private static func labelled(_ sample: Substring, name: String, worker: Int) -> String {
        let rest = sample.dropFirst(name.count)
        if rest.hasPrefix("{}") { return "\(name){worker=\"\(worker)\"}" + rest.dropFirst(2) }
        if rest.hasPrefix("{") { return "\(name){worker=\"\(worker)\"," + rest.dropFirst() }
        return "\(name){worker=\"\(worker)\"}" + rest
    }
}
