import ArgumentParser
import Foundation
import Logging
import Sluice
import SluiceKafka
import Synchronization

/// One host of `sluice bench --fleet`: a Sluice host with the control plane on, handling one topic. It
/// records every message it handles (`PARTITION OFFSET` lines in `--record`, for counting losses and
/// duplicates across the fleet) and prints what the bench measures on stdout, with wall-clock milliseconds:
///
/// - `S MS OFF OWNED PAUSED` when the number of this host's shards of the topic that are off (drained,
///   committed, paused for the flag), owned, or paused for the flag (draining or off) changes;
/// - `H MS` at the first message handled after 200 ms without any;
/// - `F MS on|off` when the host's flags (all layers resolved) turn the topic on or off.
struct FleetHostCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet-host", abstract: "One host of `sluice bench --fleet` (started by the bench).",
        shouldDisplay: false)

    @Option(name: .long) var bootstrap: String
    @Option(name: .long) var group: String
    @Option(name: .long) var topic: String
    @Option(name: .long, help: "The file every handled message's PARTITION OFFSET is appended to.") var record: String

    func run() async throws {
        var logger = Logger(label: "sluice.fleet-host")
        logger.logLevel = .error
        var kafka = SluiceConfiguration.Kafka(bootstrap: bootstrap, group: group)
        kafka.sessionTimeout = .seconds(6)
        var configuration = SluiceConfiguration(kafka: kafka, topics: [topic: TopicConfiguration()])
        configuration.control.enabled = true
        configuration.admin.enabled = false
        configuration.stateDirectory =
            FileManager.default.temporaryDirectory.appendingPathComponent("sluice-fleet-\(UUID().uuidString)").path
        let host = SluiceHost(configuration: configuration, logger: logger)
        let recorder = try HandledRecorder(path: record)
        host.register(topic, RecordingHandler(recorder: recorder))
        let signals = Task {
            _ = await ShutdownSignal.wait()
            host.shutdown()
        }
        let watcher = Task {
            var last: (off: Int, owned: Int, paused: Int) = (-1, -1, -1)
            var flagOn: Bool?
            while !Task.isCancelled {
                let on = host.flags.setting(for: TopicPartition(topic, 0)).enabled
                if on != flagOn {
                    FleetHostCommand.say("F \(FleetHostCommand.milliseconds()) \(on ? "on" : "off")")
                    flagOn = on
                }
                let shards = host.shards.filter { $0.topicPartition.topic == topic }
                let paused = shards.filter {
                    $0.state == .off || $0.state == .draining || $0.pauseReasons.contains(.flag)
                }.count
                let now = (off: shards.filter { $0.state == .off }.count, owned: shards.count, paused: paused)
                if now != last {
                    // What was handled so far is in the file before the change is announced, so a host killed
                    // after it (kill -9 while the topic is off) leaves a complete record.
                    try? recorder.flush(sync: false)
                    FleetHostCommand.say("S \(FleetHostCommand.milliseconds()) \(now.off) \(now.owned) \(now.paused)")
                    last = now
                }
                try? await Task.sleep(for: .milliseconds(2))
            }
        }
        try await host.run()
        watcher.cancel()
        signals.cancel()
        try recorder.flush()
    }

    static func milliseconds() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    static func say(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}

/// The handled messages of a fleet host, appended to a file in chunks.
final class HandledRecorder: Sendable {
    private struct State {
        var pending = ""
        var lastHandled: Int64 = 0
    }
    private let file: FileHandle
    private let state = Mutex(State())

    init(path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let file = FileHandle(forWritingAtPath: path)
        else { throw ValidationError("cannot write \(path)") }
        self.file = file
    }

    func handled(partition: Int32, offset: Int64) throws {
        let now = FleetHostCommand.milliseconds()
        let (chunk, first) = state.withLock { state -> (String?, Bool) in
            let first = now - state.lastHandled >= 200
            state.lastHandled = now
            state.pending += "\(partition) \(offset)\n"
            guard state.pending.utf8.count >= 64 * 1024 else { return (nil, first) }
            defer { state.pending = "" }
            return (state.pending, first)
        }
        if first { FleetHostCommand.say("H \(now)") }
        if let chunk { try write(chunk) }
    }

    func flush(sync: Bool = true) throws {
        let chunk = state.withLock { state -> String in
            defer { state.pending = "" }
            return state.pending
        }
        try write(chunk)
        if sync { try file.synchronize() }
    }

    private func write(_ chunk: String) throws {
        // One writer at a time: chunks must not interleave.
        try state.withLock { _ in try file.write(contentsOf: Data(chunk.utf8)) }
    }
}

struct RecordingHandler: MessageHandler {
    let recorder: HandledRecorder
    func handle(_ message: Message, context: ShardContext) async throws {
        try recorder.handled(partition: message.partition, offset: message.offset)
    }
}
