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

/// Runs blocking work on a Dispatch thread.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
    }
}

func peakResidentMegabytes() -> Int { statusMegabytes("VmHWM:") }
func residentMegabytes() -> Int { statusMegabytes("VmRSS:") }

#if os(Linux)
    /// glibc's `malloc_trim` (not exported by Swift's Glibc module).
    @_silgen_name("malloc_trim") private func glibcMallocTrim(_ pad: Int) -> Int32
#endif

/// Returns memory earlier cases freed to the system (glibc keeps freed memory in its per-thread arenas,
/// which would otherwise count toward the next case's peak), then resets the peak RSS the kernel reports
/// (Linux: writing 5 to clear_refs).
func resetPeakResident() {
    #if os(Linux)
        _ = glibcMallocTrim(0)
    #endif
    try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
}

private func statusMegabytes(_ field: String) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
    for line in status.split(separator: "\n") where line.hasPrefix(field) {
        let kilobytes = Int(line.split(separator: " ").dropFirst().first(where: { !$0.isEmpty }) ?? "") ?? 0
        return kilobytes / 1024
    }
    return -1
}
