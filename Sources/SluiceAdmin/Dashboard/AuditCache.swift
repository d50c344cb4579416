import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mustache
import Sluice
import SluiceKafka
import Synchronization

/// The audit topic's latest entries, read once for every request within `maxAge` of the last read; requests
/// that come while a read runs share it.
actor AuditCache {
    var last: (entries: [AuditEntry], error: String?, at: ContinuousClock.Instant)?
    var running: Task<([AuditEntry], String?), Never>?
    /// Reads of the audit topic made.
    private(set) var reads = 0

    func read(maxAge: Duration, _ read: @escaping @Sendable () async -> ([AuditEntry], String?)) async -> (
        [AuditEntry], String?
    ) {
        if let last, ContinuousClock.now - last.at < maxAge { return (last.entries, last.error) }
        if let running { return await running.value }
        reads += 1
        let task = Task { await read() }
        running = task
        let result = await task.value
        running = nil
        last = (result.0, result.1, .now)
        return result
    }

    /// The next read goes to the topic (a change was just made here).
    func invalidate() { last = nil }
}
