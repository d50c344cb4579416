import Foundation
import Testing

@testable import Sluice

@Suite("What a worker writes for its supervisor")
struct WorkerReportsTests {
    func directory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("sluice-worker-\(UUID().uuidString)").path
    }

    /// Sets `path`'s modification time `seconds` into the past.
    func age(_ path: String, by seconds: Int) {
        let then = time(nil) - seconds
        var times = [timeval(tv_sec: then, tv_usec: 0), timeval(tv_sec: then, tv_usec: 0)]
        utimes(path, &times)
    }

    @Test("a file is read whole when it is fresh enough; a stale one, a link or a missing one is none")
    func readFresh() throws {
        let directory = directory()
        try WorkerReports.write(Array("shards".utf8), to: directory, name: "worker-shards.json")
        #expect(WorkerReports.read(directory, name: "worker-shards.json") == Data("shards".utf8))
        age("\(directory)/worker-shards.json", by: 3)
        #expect(WorkerReports.read(directory, name: "worker-shards.json") != nil, "within the 5 s a file is shown")
        #expect(
            WorkerReports.read(directory, name: "worker-shards.json", maximumAge: 2) == nil,
            "not fresh: older than two rewrites")
        age("\(directory)/worker-shards.json", by: 10)
        #expect(WorkerReports.read(directory, name: "worker-shards.json") == nil, "a worker that died or hangs")
        try FileManager.default.createSymbolicLink(
            atPath: "\(directory)/worker-metrics.prom", withDestinationPath: "\(directory)/worker-shards.json")
        #expect(WorkerReports.read(directory, name: "worker-metrics.prom") == nil, "a link is not followed")
        #expect(WorkerReports.read(directory, name: "missing") == nil)
    }

    @Test("a worker writes a file only while its supervisor asked for it within the last minute")
    func wanted() {
        let directory = directory()
        #expect(!WorkerReports.isWanted(directory, name: "worker-metrics.prom"), "never asked")
        WorkerReports.want(directory, name: "worker-metrics.prom")
        #expect(WorkerReports.isWanted(directory, name: "worker-metrics.prom"), "asked now (the directory made)")
        age("\(directory)/worker-metrics.prom.wanted", by: 61)
        #expect(!WorkerReports.isWanted(directory, name: "worker-metrics.prom"), "not asked for a minute")
        WorkerReports.want(directory, name: "worker-metrics.prom")
        #expect(WorkerReports.isWanted(directory, name: "worker-metrics.prom"), "asked again")
    }
}
