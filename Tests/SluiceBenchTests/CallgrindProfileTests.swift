import Testing

@testable import SluiceBench

@Suite("Reading callgrind's output for sluice bench --instructions")
struct CallgrindProfileTests {
    /// Names compressed as `(id) name` then `(id)`, the inclusive cost of a call (the line after `calls=`) not
    /// counted again, relative and repeated positions: each instruction lands once, in its object.
    @Test("self cost per object and function, calls not counted twice")
    func selfCostPerObject() throws {
        let text = """
            # callgrind format
            version: 1
            positions: line
            events: Ir
            summary: 1000

            ob=(1) /work/sluice-without-debug-information
            fl=(1) ???
            fn=(1) $s6Sluice8PipelineC3runyyF
            0 100
            cob=(2) /usr/lib/x86_64-linux-gnu/librdkafka.so.1
            cfn=(2) rd_kafka_consumer_poll
            calls=3 0
            0 500
            +2 50
            ob=(2)
            fn=(2)
            0 500
            ob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
            fn=(3) memcpy
            * 300
            ob=(4) /opt/swift/usr/lib/swift/linux/libswiftCore.so
            fn=(4) swift_retain
            -1 50
            """
        let profile = try CallgrindProfile(text: text)
        #expect(profile.total == 1000)
        #expect(profile.summary == 1000)
        #expect(
            profile.functions[
                .init(object: "/work/sluice-without-debug-information", name: "$s6Sluice8PipelineC3runyyF")]
                == 150)
        #expect(
            profile.functions[
                .init(object: "/usr/lib/x86_64-linux-gnu/librdkafka.so.1", name: "rd_kafka_consumer_poll")] == 500)
        let owners = profile.byOwner(executable: "/work/sluice-without-debug-information")
        #expect(owners == [.sluice: 150, .librdkafka: 500, .libc: 300, .swiftRuntime: 50])
    }

    /// With `--dump-instr=yes` a cost line has two position columns, and with several events Ir may not be the
    /// first; a line without the event's column costs nothing.
    @Test("two position columns, Ir among several events")
    func columns() throws {
        let text = """
            positions: instr line
            events: Dr Ir
            totals: 7 30
            ob=(1) /usr/lib/x86_64-linux-gnu/libm.so.6
            fn=(1) sqrt
            0x10 4 1 20
            +3 * 2 10
            +1 * 5
            """
        let profile = try CallgrindProfile(text: text)
        #expect(profile.total == 30)
        #expect(profile.summary == 30)
        #expect(profile.byOwner(executable: "/x/sluice") == [.libc: 30])
    }

    @Test("a cost line that is not one is named by its line number")
    func badLine() {
        let text = """
            events: Ir
            fn=(1) f
            0 12x
            """
        #expect(throws: BenchError.self) { try CallgrindProfile(text: text) }
        do {
            _ = try CallgrindProfile(text: text)
        } catch {
            #expect(error.description.contains("line 3"))
        }
    }

    /// Objects are sorted into the owners the table prints.
    @Test("owners of the objects a host runs in")
    func owners() {
        let executable = "/tmp/sluice-callgrind/sluice-without-debug-information"
        let cases: [(String, CallgrindProfile.Owner)] = [
            (executable, .sluice),
            ("/usr/lib/x86_64-linux-gnu/librdkafka.so.1", .librdkafka),
            ("/root/.build/librdkafka-2.16/librdkafka.so.1", .librdkafka),
            ("/opt/swift/usr/lib/swift/linux/libswift_Concurrency.so", .swiftRuntime),
            ("/opt/swift/usr/lib/swift/linux/libdispatch.so", .swiftRuntime),
            ("/opt/swift/usr/lib/swift/linux/libFoundationEssentials.so", .swiftRuntime),
            ("/usr/lib/x86_64-linux-gnu/libc.so.6", .libc),
            ("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", .libc),
            ("/usr/lib/x86_64-linux-gnu/libzstd.so.1.5.4", .other),
            ("???", .other),
        ]
        for (object, owner) in cases {
            #expect(CallgrindProfile.Owner(object: object, executable: executable) == owner, "\(object)")
        }
    }
}
