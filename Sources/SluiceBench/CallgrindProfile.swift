/// What valgrind's callgrind counted, read from its output file: instructions executed (event `Ir`) per object
/// file and per function, each instruction counted once, in the function that executed it (its self cost).
///
/// The file format (valgrind's "Callgrind Format Specification"): `ob=`/`fn=` set the object and function that
/// the cost lines below them belong to, names are compressed as `(id) name` on first use and `(id)` after;
/// a cost line is its position columns (`positions:`) then one number per event (`events:`); the cost line
/// after a `calls=` line is the inclusive cost of that call, already counted in the callee, so it is skipped.
struct CallgrindProfile: Sendable, Equatable {
    /// Instructions per object (the executable, each shared library; `???` where callgrind knew none).
    var objects: [String: UInt64] = [:]
    /// Instructions per function, keyed by object and function name.
    var functions: [Function: UInt64] = [:]
    /// The file's own total (`summary:` or `totals:`), to check the sum against.
    var summary: UInt64?

    struct Function: Hashable, Sendable {
        var object: String
        var name: String
    }

    /// Every instruction counted.
    var total: UInt64 { objects.values.reduce(0, +) }

    /// Who executed the instructions, for the breakdown of `sluice bench --instructions`.
    enum Owner: String, CaseIterable, Sendable {
        /// The executable: Sluice and the Swift packages it links statically.
        case sluice = "Sluice"
        case librdkafka
        /// The Swift runtime, concurrency, Foundation and libdispatch.
        case swiftRuntime = "Swift runtime"
        /// libc, libm, the dynamic loader, libgcc, libstdc++.
        case libc
        /// Anything else: librdkafka's compression and TLS libraries, valgrind's preloads, unknown code.
        case other

        init(object: String, executable: String) {
            let name = object.split(separator: "/").last.map(String.init) ?? object
            if object == executable {
                self = .sluice
            } else if name.hasPrefix("librdkafka") {
                self = .librdkafka
            } else if object.contains("/lib/swift/")
                || ["libswift", "libdispatch", "libFoundation", "lib_Foundation", "libBlocksRuntime"].contains(where: {
                    name.hasPrefix($0)
                })
            {
                self = .swiftRuntime
            } else if [
                "libc.so", "libc-", "libm.so", "libm-", "ld-linux", "libpthread", "libgcc_s", "libstdc++", "libdl",
            ]
            .contains(where: { name.hasPrefix($0) }) {
                self = .libc
            } else {
                self = .other
            }
        }
    }

    /// Instructions per owner; `executable` is the path callgrind names the measured program by.
    func byOwner(executable: String) -> [Owner: UInt64] {
        var owners: [Owner: UInt64] = [:]
        for (object, count) in objects { owners[Owner(object: object, executable: executable), default: 0] += count }
        return owners
    }

    /// A callgrind output file's text. Throws naming the line it cannot read.
    init(text: String) throws(BenchError) {
        var positions = 1
        var event = 0
        var objectNames: [String: String] = [:]
        var functionNames: [String: String] = [:]
        var object = "???"
        var function = "???"
        var skipNext = false
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            guard let first = line.first else { continue }
            if first.isNumber || first == "+" || first == "-" || first == "*" {
                if skipNext {
                    skipNext = false
                    continue
                }
                let fields = line.split(separator: " ")
                guard fields.count > positions + event else { continue }  // that event is 0 on this line
                guard let count = UInt64(fields[positions + event]) else {
                    throw BenchError("callgrind output, line \(index + 1): not a cost line: '\(line.prefix(80))'")
                }
                objects[object, default: 0] += count
                functions[Function(object: object, name: function), default: 0] += count
                continue
            }
            guard let equals = line.firstIndex(where: { $0 == "=" || $0 == ":" }) else { continue }
            let key = line[..<equals]
            let value = line[line.index(after: equals)...].drop { $0 == " " }
            switch key {
            case "positions":
                positions = value.split(separator: " ").count
            case "events":
                let names = value.split(separator: " ")
                guard let found = names.firstIndex(of: "Ir") else {
                    throw BenchError("callgrind output: no Ir event (events: \(value))")
                }
                event = found
            case "summary", "totals":
                summary = value.split(separator: " ").dropFirst(event).first.flatMap { UInt64($0) }
            case "ob":
                object = Self.name(value, in: &objectNames)
            case "cob":
                _ = Self.name(value, in: &objectNames)
            case "fn":
                function = Self.name(value, in: &functionNames)
            case "cfn":
                _ = Self.name(value, in: &functionNames)
            case "calls":
                skipNext = true
            default:
                break
            }
        }
    }

    /// A compressed name: `(id) name` defines id, `(id)` refers to it.
    private static func name(_ value: Substring, in names: inout [String: String]) -> String {
        guard value.first == "(", let close = value.firstIndex(of: ")") else { return String(value) }
        let id = String(value[value.index(after: value.startIndex)..<close])
        let rest = value[value.index(after: close)...].drop { $0 == " " }
        if rest.isEmpty { return names[id] ?? "(\(id))" }
        names[id] = String(rest)
        return String(rest)
    }
}

/// A failure of the bench's own, with what went wrong.
struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
