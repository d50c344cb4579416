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
/// rewritten whole every second (a temporary file renamed over it). The supervisor reads them when asked; a
/// file older than ``staleAfter`` is a worker that died or hangs, and is not shown (its slot says why).
enum WorkerReports {
    /// The worker's shards, a JSON array of ``ShardReport``.
    static let shardsFile = "worker-shards.json"
    /// The worker's Prometheus metrics, as its `/metrics` would answer.
    static let metricsFile = "worker-metrics.prom"
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

    /// `directory/name` when it is a regular file of this user's, at most ``maximumBytes``, written within
    /// `staleAfter` of `nowSeconds` (seconds since the epoch); nil otherwise.
    static func read(_ directory: String, name: String, nowSeconds: Int = Int(time(nil))) -> Data? {
        let path = "\(directory)/\(name)"
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG, status.st_uid == geteuid(),
            status.st_size <= maximumBytes,
            nowSeconds - Int(status.st_mtim.tv_sec) <= Int(staleAfter.components.seconds)
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
    /// A worker's shards, written for its supervisor every ``WorkerReports/interval``.
    func writeWorkerShards() {
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
    public func reportMetricsToSupervisor(_ metrics: some Collection<UInt8>) {
        guard worker != nil else { return }
        do {
            try WorkerReports.write(metrics, to: configuration.stateDirectory, name: WorkerReports.metricsFile)
        } catch {
            logger.debug("worker metrics not written", metadata: ["error": "\(error)"])
        }
    }

    /// While this host supervises workers: every running worker's shards, as it last reported them (at most
    /// five seconds ago), each with its slot. A report that does not read as one (a file from outside the
    /// process) is left out with a warning.
    public var workerShards: [ShardReport] {
        guard supervisesWorkers else { return [] }
        var reports: [ShardReport] = []
        for slot in 0..<configuration.workers {
            let directory = configuration.stateDirectory + "/w\(slot)"
            guard let data = WorkerReports.read(directory, name: WorkerReports.shardsFile) else { continue }
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

    /// While this host supervises workers: each running worker's metrics text (Prometheus), as it last wrote it.
    public var workerMetrics: [(slot: Int, text: String)] {
        guard supervisesWorkers else { return [] }
        return (0..<configuration.workers).compactMap { slot in
            WorkerReports.read(configuration.stateDirectory + "/w\(slot)", name: WorkerReports.metricsFile).map {
                (slot, String(decoding: $0, as: UTF8.self))
            }
        }
    }
}
