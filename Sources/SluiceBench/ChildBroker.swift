import ArgumentParser
import Dispatch
import Foundation
import Logging
import Metrics
import Prometheus
import Sluice
import SluiceAdmin
import SluiceKafka
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `sluice dev-broker` in a child process.
final class ChildBroker {
    let process = Process()
    let bootstrap: String

    init(topics: [String]) throws {
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = ["dev-broker"] + topics.flatMap { ["--topic", $0] }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        var bytes: [UInt8] = []
        while !bytes.contains(10) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            bytes += chunk
        }
        let line = String(decoding: bytes.prefix { $0 != 10 }, as: UTF8.self)
        guard line.hasPrefix("bootstrap=") else { throw ValidationError("the dev broker did not start: '\(line)'") }
        bootstrap = String(line.dropFirst("bootstrap=".count))
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}
