/// What makes a process a worker of a supervising host: the environment its supervisor starts it with. Read
/// from the environment (outside input: a slot out of range, or a descriptor that is not a number, is not a
/// worker's environment, and the process runs as the host itself would).
public struct WorkerEnvironment: Sendable, Equatable {
    /// `SLUICE_WORKER_SLOT`: which slot the process is the worker of (0 up to `host.workers` - 1).
    public static let slotVariable = "SLUICE_WORKER_SLOT"
    /// `SLUICE_WORKER_LIVENESS_FD`: the pipe the worker writes its heartbeats to.
    public static let livenessVariable = "SLUICE_WORKER_LIVENESS_FD"
    /// The descriptor the supervisor gives every worker for its heartbeats.
    static let livenessDescriptor: Int32 = 3

    /// The slot.
    public let slot: Int
    /// The heartbeat pipe's descriptor.
    public let livenessDescriptor: Int32

    /// The worker environment in `environment`, or nil when the process is not a worker.
    public init?(_ environment: [String: String]) {
        guard let slotText = environment[Self.slotVariable], slotText.count <= 4, let slot = Int(slotText),
            (0..<SluiceConfiguration.maximumWorkers).contains(slot),
            let descriptorText = environment[Self.livenessVariable], descriptorText.count <= 4,
            let descriptor = Int32(descriptorText), descriptor > 2
        else { return nil }
        self.slot = slot
        self.livenessDescriptor = descriptor
    }

    /// The configuration a worker of this slot runs with: its own static member id (`ID-wSLOT`, when the host
    /// has a `kafka.groupInstanceId`) and its own state directory (`DIRECTORY/wSLOT`: the crash journal its
    /// successor reads, the quarantines of its partitions).
    func workerConfiguration(_ configuration: SluiceConfiguration) -> SluiceConfiguration {
        var configuration = configuration
        configuration.kafka.groupInstanceId = configuration.kafka.groupInstanceId.map { "\($0)-w\(slot)" }
        configuration.stateDirectory += "/w\(slot)"
        return configuration
    }
}
