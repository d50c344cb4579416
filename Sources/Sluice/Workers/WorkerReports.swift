#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// What a worker shows its supervisor, so that the supervisor's admin API, dashboard, `/metrics` and `sluice
/// status` cover every worker's shards (docs/architecture.md §14): files in the worker's state directory, each
/// rewritten whole every second (a temporary file renamed over it) while its supervisor wants it: a supervisor
/// asked for them touches `NAME.wanted` beside each, and a worker writes a file only while that was touched in
/// the last ``wantedFor`` (a host of 10,000 partitions does not render its metrics every second for nobody).
/// The supervisor reads them when asked; a file older than ``staleAfter`` is a worker that died or hangs, and is
/// not shown (its slot says why).
enum WorkerReports {
    /// The worker's shards, a JSON array of ``ShardReport``.
    static let shardsFile = "worker-shards.json"
    /// The worker's Prometheus metrics, as its `/metrics` would answer.
    static let metricsFile = "worker-metrics.prom"
    /// How long after the supervisor last asked for a file a worker keeps writing it.
    static let wantedFor = Duration.seconds(60)
    /// How long a supervisor asked for a file it has no fresh copy of waits for one.
    static let freshWait = Duration.seconds(2)
    /// How often a worker rewrites its files.
    static let interval = Duration.seconds(1)
    /// A file older than this is not shown.
    static let staleAfter = Duration.seconds(5)
    /// The most a supervisor reads of one file (a file from outside the process).
    static let maximumBytes = 64 << 20

    /// Writes `bytes` to `directory/name` whole: readers see the old file or the new one, never a part.
    static func write(_ bytes: some Collection<UInt8>, to directory: String, name: String) throws {
        let path = "\(directory)/\(name)"
        let temporary = "\(path).\(getpid()).tmp"
        if access(directory, F_OK) != 0 {
            try? FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard descriptor >= 0 else { throw failure("opening \(temporary)") }
        let data = Array(bytes)
        let written = data.withUnsafeBytes { buffer in
            var done = 0
            while done < buffer.count {
                let result = Glibc.write(descriptor, buffer.baseAddress! + done, buffer.count - done)
                if result < 0, errno == EINTR { continue }
                guard result > 0 else { return false }
                done += result
            }
            return true
        }
        close(descriptor)
        guard written, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw failure("writing \(path)")
        }
    }

    /// The supervisor wants `directory/name`: touches `name.wanted` (created when missing).
    static func want(_ directory: String, name: String) {
        let path = "\(directory)/\(name).wanted"
        guard utimes(path, nil) != 0 else { return }
        if access(directory, F_OK) != 0 {
            try? FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if descriptor >= 0 { close(descriptor) }
    }

    /// Whether the supervisor asked for `directory/name` within ``wantedFor``.
    static func isWanted(_ directory: String, name: String, nowSeconds: Int = Int(time(nil))) -> Bool {
        var status = stat()
        guard lstat("\(directory)/\(name).wanted", &status) == 0 else { return false }
        return nowSeconds - Int(status.st_mtim.tv_sec) <= Int(wantedFor.components.seconds)
    }

    /// `directory/name` when it is a regular file of this user's, at most ``maximumBytes``, written within
    /// `maximumAge` seconds of `nowSeconds` (seconds since the epoch); nil otherwise.
    static func read(
        _ directory: String, name: String, maximumAge: Int = Int(staleAfter.components.seconds),
        nowSeconds: Int = Int(time(nil))
    ) -> Data? {
        let path = "\(directory)/\(name)"
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG, status.st_uid == geteuid(),
            status.st_size <= maximumBytes,
            nowSeconds - Int(status.st_mtim.tv_sec) <= maximumAge
        else { return nil }
        var data = Data(count: Int(status.st_size))
        let count = data.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, 0) }
        return count == Int(status.st_size) ? data : nil
    }

    private static func failure(_ what: String) -> SluiceError {
        SluiceError(code: .state, message: "worker report: \(what) failed: \(String(cString: strerror(errno)))")
    }
}

extension SluiceHost {
    /// A worker's shards, written for its supervisor every ``WorkerReports/interval`` while it wants them.
    func writeWorkerShards() {
        guard WorkerReports.isWanted(configuration.stateDirectory, name: WorkerReports.shardsFile) else { return }
        let now = ContinuousClock.now
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(shards.map { ShardReport($0, now: now) }) else { return }
        do {
            try WorkerReports.write(data, to: configuration.stateDirectory, name: WorkerReports.shardsFile)
        } catch {
            logger.debug("worker shards not written", metadata: ["error": "\(error)"])
        }
    }

    /// In a worker, writes `metrics` (Prometheus text) where its supervisor's `/metrics` reads it: the admin
    /// server of a worker calls this every second instead of listening. Elsewhere it does nothing.
    public func reportMetricsToSupervisor(_ metrics: @autoclosure () -> [UInt8]) {
        guard worker != nil, WorkerReports.isWanted(configuration.stateDirectory, name: WorkerReports.metricsFile)
        else { return }
        do {
            try WorkerReports.write(metrics(), to: configuration.stateDirectory, name: WorkerReports.metricsFile)
        } catch {
            logger.debug("worker metrics not written", metadata: ["error": "\(error)"])
        }
    }

    /// While this host supervises workers: every running worker's shards as it last reported them (at most
    /// five seconds ago), each with its slot, at once (a worker not asked for a minute has none yet: the
    /// dashboard, which asks every few seconds, always has them). A report that does not read as one (a file from
    /// outside the process) is left out with a warning.
    public var workerShards: [ShardReport] {
        guard supervisesWorkers else { return [] }
        return decodeShards(workerFiles(WorkerReports.shardsFile, fresh: [:]))
    }

    /// Every running worker's shards, fresh: asked for, and waited for up to two seconds where a worker's copy
    /// is older than its rewrites (`/v1/shards`, `sluice status`).
    public func freshWorkerShards() async -> [ShardReport] {
        guard supervisesWorkers else { return [] }
        return decodeShards(await freshWorkerFiles(WorkerReports.shardsFile))
    }

    /// Every running worker's metrics text (Prometheus), fresh, as ``freshWorkerShards()``.
    public func freshWorkerMetrics() async -> [(slot: Int, text: String)] {
        guard supervisesWorkers else { return [] }
        return await freshWorkerFiles(WorkerReports.metricsFile).map {
            ($0.slot, String(decoding: $0.data, as: UTF8.self))
        }
    }

    private func decodeShards(_ files: [(slot: Int, data: Data)]) -> [ShardReport] {
        var reports: [ShardReport] = []
        for (slot, data) in files {
            do {
                let shards = try JSONDecoder().decode([ShardReport].self, from: data)
                guard shards.count <= InputLimits.shardsPerHost else { continue }
                reports += shards.map { shard in
                    var shard = shard
                    shard.worker = slot
                    return shard
                }
            } catch {
                logger.warning(
                    "a worker's shard report was refused",
                    metadata: ["sluice.workerSlot": "\(slot)", "error": "\(error)"])
            }
        }
        return reports.sorted { ($0.topicPartition, $0.worker ?? 0) < ($1.topicPartition, $1.worker ?? 0) }
    }

    private var workerDirectories: [String] {
        (0..<configuration.workers).map { configuration.stateDirectory + "/w\($0)" }
    }

    /// Asks each running worker for file `name` and returns those it has: the `fresh` copies given, else the
    /// last one when not stale.
    private func workerFiles(_ name: String, fresh: [Int: Data]) -> [(slot: Int, data: Data)] {
        let directories = workerDirectories
        let running = workerSlots.filter { $0.state == "running" }.map(\.slot)
        for slot in running { WorkerReports.want(directories[slot], name: name) }
        return running.compactMap { slot in
            (fresh[slot] ?? WorkerReports.read(directories[slot], name: name)).map { (slot, $0) }
        }
    }

    /// ``workerFiles(_:fresh:)`` after waiting up to ``WorkerReports/freshWait`` for each running worker to
    /// rewrite the file (written within the last two seconds).
    private func freshWorkerFiles(_ name: String) async -> [(slot: Int, data: Data)] {
        let directories = workerDirectories
        let running = workerSlots.filter { $0.state == "running" }.map(\.slot)
        for slot in running { WorkerReports.want(directories[slot], name: name) }
        let deadline = ContinuousClock.now + WorkerReports.freshWait
        var fresh: [Int: Data] = [:]
        while true {
            for slot in running where fresh[slot] == nil {
                fresh[slot] = WorkerReports.read(directories[slot], name: name, maximumAge: 2)
            }
            if fresh.count == running.count || ContinuousClock.now >= deadline { break }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return workerFiles(name, fresh: fresh)
    }
}
