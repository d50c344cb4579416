import Logging
import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

/// The supervisor loop driven through ``ShardConsumer`` by a scripted consumer: orderings that a real
/// cluster produces only by chance are produced here on purpose.
@Suite("Supervisor loop without a cluster", .timeLimit(.minutes(2)))
struct SupervisorLoopTests {
    static func host(
        _ topics: [String: TopicConfiguration] = ["orders": TopicConfiguration()],
        clock: any HostClock = SystemHostClock(),
        stallAfter: Duration = .seconds(30)
    ) -> SluiceHost {
        var configuration = SluiceConfiguration(kafka: .init(bootstrap: "unused:1", group: "g"), topics: topics)
        configuration.flags.pollInterval = .seconds(3_600)  // flags change here only when the test says
        configuration.stallAfter = stallAfter
        return SluiceHost(configuration: configuration, logger: HostFixture.logger, clock: clock)
    }

    /// Starts `host` on a scripted consumer that has assigned it `orders/0` (callback and event both).
    static func startAssigned(_ host: SluiceHost) throws -> (ScriptedConsumer, Task<Void, any Error>, TopicPartition) {
        let consumer = ScriptedConsumer()
        let running = try start(host, consumer)
        let partition = TopicPartition("orders", 0)
        consumer.assign([partition])
        consumer.deliverAssignment([partition])
        return (consumer, running, partition)
    }

    /// Starts a host whose `orders` flag is off, recording what it handles, on a scripted consumer that has
    /// assigned it nothing yet (the test assigns `orders/0`).
    static func startWithOrdersOff() async throws -> (
        SluiceHost, HandledMessages, ScriptedConsumer, Task<Void, any Error>, TopicPartition
    ) {
        let host = Self.host()
        let handled = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        host.operatorFlags.set(.topic("orders"), enabled: false)
        await host.flags.refresh()
        let consumer = ScriptedConsumer()
        return (host, handled, consumer, try Self.start(host, consumer), TopicPartition("orders", 0))
    }

    static func start(_ host: SluiceHost, _ consumer: ScriptedConsumer) throws -> Task<Void, any Error> {
        let handlers = try host.startOnce()
        return Task { try await host.run(handlers: handlers, consumer: consumer, producer: nil, deadLetters: nil) }
    }

    /// Found in a loaded run of ControlPlaneTests.tripFollowsThePartition: a shard that had not run on this host
    /// (assigned tripped) was reset; its pipeline handled every message while the shard's resume was still on
    /// its way back from the consumer, and the host's view named the pipeline only after that. The watermark
    /// storer looked meanwhile, was refused by the fence (then the view), and noted the progress as stored:
    /// nothing was stored or committed until the pipeline ended (lag 7, reported stalled). The fence is now the
    /// shard's latest pipeline, set when it starts.
    @Test(
        "a pipeline that handles its messages while its shard's resume still waits in the consumer gets its watermark stored"
    )
    func watermarkStoredBeforeTheViewCatchesUp() async throws {
        let (host, handled, consumer, running, partition) = try await Self.startWithOrdersOff()
        consumer.assign([partition], initialPauseReasons: [.flag])
        consumer.deliverAssignment([partition])
        consumer.append(partition, count: 10)
        try await waitUntil("the shard is off, not having run") { host.shards.first?.state == .off }
        // Its resume waits in the consumer: the host shows the new pipeline once the resume is applied.
        let hang = Hang()
        consumer.pauseHang.withLock { $0 = hang }
        host.operatorFlags.unset(.topic("orders"))
        await host.flags.refresh()
        try await waitUntil("the pipeline handled every message while its resume waits") { handled.distinct == 10 }
        try await waitUntil("its watermark is stored while the resume still waits") { consumer.stored(partition) == 10 }
        consumer.pauseHang.withLock { $0 = nil }
        hang.release()
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    /// The fence that lets only a shard's current pipeline store its watermark was the shard's view, which names a
    /// pipeline once its resume is applied: a pipeline that ended before that (it crashed, here, while its resume
    /// waited in the consumer) had its last watermark refused, and the shard, tripped, never stored what it did.
    @Test("a pipeline that ends before the host's view names it still gets its last watermark stored")
    func lastWatermarkOfAPipelineNotShownYet() async throws {
        var orders = TopicConfiguration()
        orders.breaker = .latched
        let host = Self.host(["orders": orders])
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.offset == 5 { throw TestFailure(description: "poison") }
                handled.append(message)
            })
        host.operatorFlags.set(.topic("orders"), enabled: false)
        await host.flags.refresh()
        let consumer = ScriptedConsumer()
        let running = try Self.start(host, consumer)
        let partition = TopicPartition("orders", 0)
        consumer.assign([partition], initialPauseReasons: [.flag])
        consumer.deliverAssignment([partition])
        consumer.append(partition, count: 10)
        try await waitUntil("the shard is off") { host.shards.first?.state == .off }
        let hang = Hang()
        consumer.pauseHang.withLock { $0 = hang }
        host.operatorFlags.unset(.topic("orders"))
        await host.flags.refresh()
        try await waitUntil("offsets 0 to 4 handled, then the pipeline crashed at 5 while its resume waits") {
            handled.distinct == 5 && host.registry.runningPipelines == 0
        }
        consumer.pauseHang.withLock { $0 = nil }
        hang.release()
        try await waitUntil("tripped") { host.shards.first?.state.name == "tripped" }
        #expect(consumer.stored(partition) == 5, "what the pipeline did is stored: 0 to 4")
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test(
        "a flag turned on between the rebalance callback and the supervisor's assignment does not leave the partition paused"
    )
    func flagOnBetweenCallbackAndAssignment() async throws {
        let (host, handled, consumer, running, partition) = try await Self.startWithOrdersOff()
        // The rebalance callback sees the flag off: the partition is paused before its first fetch.
        consumer.assign([partition], initialPauseReasons: host.flags.setting(for: partition).enabled ? [] : [.flag])
        #expect(consumer.pauseReasons(for: partition) == [.flag])
        // The flag goes on before the supervisor handles the assignment.
        host.operatorFlags.unset(.topic("orders"))
        await host.flags.refresh()
        consumer.deliverAssignment([partition])
        consumer.append(partition, count: 10)
        try await waitUntil("the shard runs and its partition is not paused") {
            host.shards.first?.state == .running && consumer.pauseReasons(for: partition).isEmpty
        }
        try await waitUntil("its messages are handled") { handled.count == 10 }
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test(
        "a shard turned back on is resumed before its seek: the seek wakes librdkafka's broker thread, a resume alone does not"
    )
    func resumeBeforeSeek() async throws {
        let host = Self.host()
        let handled = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let (consumer, running, partition) = try Self.startAssigned(host)
        consumer.append(partition, count: 5)
        try await waitUntil("the first 5 handled") { handled.count == 5 }
        host.operatorFlags.set(.topic("orders"), enabled: false)
        await host.flags.refresh()
        try await waitUntil("the shard is off") { host.shards.first?.state == .off }
        let before = consumer.calls.withLock { $0.count }
        host.operatorFlags.unset(.topic("orders"))
        await host.flags.refresh()
        consumer.append(partition, count: 5)
        try await waitUntil("the next 5 handled") { handled.distinct == 10 }
        let after = consumer.calls.withLock { Array($0.dropFirst(before)) }
        let resumed = after.firstIndex(of: "pause orders/0 []")
        let sought = after.firstIndex { $0.hasPrefix("seek orders/0 ") }
        #expect(resumed != nil && sought != nil && resumed! < sought!, "\(after)")
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test(
        "a flag for a topic of 500 partitions, and a shutdown, reach the consumer as one pause call each, not one per shard"
    )
    func pausesInOneCall() async throws {
        let host = Self.host()
        host.register("orders", ClosureHandler { _, _ in })
        let consumer = ScriptedConsumer()
        let running = try Self.start(host, consumer)
        let partitions = (0..<500).map { TopicPartition("orders", Int32($0)) }
        consumer.assign(partitions)
        consumer.deliverAssignment(partitions)
        try await waitUntil("500 shards running") {
            host.shards.count == 500 && host.shards.allSatisfy { $0.state == .running }
        }
        let beforeFlag = consumer.pauseCalls
        host.operatorFlags.set(.topic("orders"), enabled: false)
        await host.flags.refresh()
        try await waitUntil("every partition paused for the flag") {
            partitions.allSatisfy { consumer.pauseReasons(for: $0) == [.flag] }
        }
        #expect(consumer.pauseCalls == beforeFlag + 1, "one call for the 500 partitions")
        host.operatorFlags.unset(.topic("orders"))
        await host.flags.refresh()
        try await waitUntil("every partition fetching again") {
            partitions.allSatisfy { consumer.pauseReasons(for: $0).isEmpty }
        }
        let beforeShutdown = consumer.pauseCalls
        host.shutdown()
        try await waitUntil("every shard stopped and paused") {
            partitions.allSatisfy { !consumer.pauseReasons(for: $0).isEmpty }
        }
        #expect(consumer.pauseCalls == beforeShutdown + 1, "one call for the 500 stopping shards")
        consumer.finish()
        try await running.value
    }

    @Test(
        "with a coordinator that answers nothing, restarts, flags and revocations are still handled and the host stays healthy"
    )
    func unansweringCoordinator() async throws {
        var orders = TopicConfiguration()
        orders.breaker = BreakerPolicy(
            restartBackoff: .init(initial: .milliseconds(10), maximum: .milliseconds(10), jitter: 0), trip: nil,
            cooldown: nil, healthyAfter: .seconds(60))
        let host = Self.host(["orders": orders])
        let failures = Locked(1)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.partition == 0, message.offset == 3,
                    failures.withLock({
                        $0 -= 1
                        return $0 >= 0
                    })
                {
                    throw TestFailure(description: "once")
                }
                handled.append(message)
            })
        let consumer = ScriptedConsumer()
        let hang = Hang()
        consumer.unanswered.withLock { $0 = hang }
        defer { hang.release() }
        let running = try Self.start(host, consumer)
        let partitions = (0..<3).map { TopicPartition("orders", $0) }
        consumer.assign(partitions)
        consumer.deliverAssignment(partitions)
        for partition in partitions { consumer.append(partition, count: 10) }
        // Commits (periodic and on every crash) and lag lookups now wait for ever; the loop must not.
        try await waitUntil("partition 0 crashed, restarted and finished; the others finished") {
            handled.distinct == 30 && host.shards.first { $0.topicPartition == partitions[0] }?.attempt == 1
        }
        host.operatorFlags.set(.partition(partitions[1]), enabled: false)
        await host.flags.refresh()
        try await waitUntil("partition 1 off") {
            host.shards.first { $0.topicPartition == partitions[1] }?.state == .off
        }
        consumer.revoke([partitions[2]])
        try await waitUntil("partition 2 released") { consumer.releasedPartitions == [partitions[2]] }
        #expect(host.health().healthy, "\(host.health().reasons)")
        hang.release()
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test("a seek that fails before a restart does not start the pipeline: the shard crashes again and retries")
    func failedSeekCrashes() async throws {
        var orders = TopicConfiguration()
        orders.breaker = BreakerPolicy(
            restartBackoff: .init(initial: .milliseconds(10), maximum: .milliseconds(10), jitter: 0), trip: nil,
            cooldown: nil, healthyAfter: .seconds(60))
        let host = Self.host(["orders": orders])
        let failures = Locked(1)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.offset == 3,
                    failures.withLock({
                        $0 -= 1
                        return $0 >= 0
                    })
                {
                    throw TestFailure(description: "once")
                }
                handled.append(message)
            })
        let events = EventLog(host)
        let consumer = ScriptedConsumer()
        let running = try Self.start(host, consumer)
        let partition = TopicPartition("orders", 0)
        consumer.failNextSeeks(2)
        consumer.assign([partition])
        consumer.deliverAssignment([partition])
        consumer.append(partition, count: 10)
        try await waitUntil("every message handled after the restart") { handled.distinct == 10 }
        // Events reach the log asynchronously: wait for the last start there.
        try await waitUntil("the events logged") {
            events.of(partition).map(\.name).filter { $0 == "started" }.count >= 2
        }
        let kinds = events.of(partition).map(\.name)
        // started, crashed (the failure), then two restarts whose seek failed (each a crash, no start), then
        // a start after a seek that worked.
        #expect(kinds.filter { $0 == "started" }.count == 2, "\(kinds)")
        #expect(kinds.filter { $0 == "crashed" }.count == 3, "\(kinds)")
        let crashes = events.events.value.compactMap { event -> String? in
            if case .crashed(let reason, _) = event.kind { return reason }
            return nil
        }
        #expect(crashes.dropFirst().allSatisfy { $0.hasPrefix("seek before restart failed") }, "\(crashes)")
        #expect(
            consumer.seeks == [TopicPartitionOffset(partition, offset: 3)], "one seek worked, to the failed message")
        #expect(handled.all.value.map(\.offset).sorted() == Array(0..<10), "the restarted pipeline read from the seek")
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test(
        "a crash while draining toward a restart (flag off, then on, then the in-flight message fails) leaves no flag pause behind"
    )
    func crashWhileDrainingTowardRestart() async throws {
        var orders = TopicConfiguration()
        orders.breaker = BreakerPolicy(
            restartBackoff: .init(initial: .milliseconds(10), maximum: .milliseconds(10), jitter: 0), trip: nil,
            cooldown: nil, healthyAfter: .seconds(60))
        let host = Self.host(["orders": orders])
        let inCall = Locked(false)
        let release = Locked(false)
        let failures = Locked(1)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.offset == 0, failures.value > 0 {
                    inCall.withLock { $0 = true }
                    while !release.value { try? await Task.sleep(for: .milliseconds(1)) }
                    failures.withLock { $0 -= 1 }
                    throw TestFailure(description: "failed while draining")
                }
                handled.append(message)
            })
        let (consumer, running, partition) = try Self.startAssigned(host)
        consumer.append(partition, count: 5)
        try await waitUntil("offset 0 is in its handler") { inCall.value }
        host.operatorFlags.set(.topic("orders"), enabled: false)
        try await waitUntil("draining toward off") { host.shards.first?.state == .draining }
        host.operatorFlags.unset(.topic("orders"))
        try await waitUntil("flag back on") { host.shards.first?.flag.enabled == true }
        release.withLock { $0 = true }
        try await waitUntil("restarted after the crash and handled everything") { handled.distinct == 5 }
        #expect(host.shards.first?.state == .running)
        #expect(
            consumer.pauseReasons(for: partition).isEmpty,
            "no flag (or breaker) pause left: \(consumer.pauseReasons(for: partition))")
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test("backoff, restart and trip follow the host's clock: nothing restarts until the clock reaches the backoff")
    func breakerOnTheHostClock() async throws {
        let clock = ManualHostClock()
        let start = clock.now
        var orders = TopicConfiguration()
        orders.breaker = BreakerPolicy(
            restartBackoff: .init(initial: .seconds(1), maximum: .seconds(8), jitter: 0),
            trip: .init(crashes: 3, within: .seconds(60)), cooldown: nil, healthyAfter: .seconds(60))
        let host = Self.host(["orders": orders], clock: clock)
        let failing = Locked(true)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.offset == 3, failing.value { throw TestFailure(description: "poison") }
                handled.append(message)
            })
        let events = EventLog(host)
        let (consumer, running, partition) = try Self.startAssigned(host)
        consumer.append(partition, count: 10)
        try await waitUntil("first crash: backing off for 1 s of host time") {
            host.shards.first?.state == .backingOff(attempt: 1, until: start + .seconds(1))
        }
        #expect(consumer.seeks.isEmpty, "no restart before the clock moves")
        clock.advance(by: .seconds(1))
        try await waitUntil("restarted at the failed offset, crashed again: 2 s") {
            host.shards.first?.state == .backingOff(attempt: 2, until: start + .seconds(3))
        }
        #expect(consumer.seeks == [TopicPartitionOffset(partition, offset: 3)])
        clock.advance(by: .seconds(2))
        try await waitUntil("the third crash within 60 s trips") {
            if case .tripped(let since, _) = host.shards.first?.state { return since == start + .seconds(3) }
            return false
        }
        failing.withLock { $0 = false }
        #expect(await host.reset(partition))
        try await waitUntil("after a reset everything is handled") { handled.distinct == 10 }
        try await waitUntil("four starts logged") {
            events.of(partition).map(\.name).filter { $0 == "started" }.count >= 4
        }
        #expect(events.of(partition).map(\.name).filter { $0 == "started" }.count == 4)
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test(
        "a partition that fetched nothing since its assignment while messages wait gets its fetcher restarted, once per stall"
    )
    func unstartedPartitionRestarted() async throws {
        let clock = ManualHostClock()
        let host = Self.host(clock: clock, stallAfter: .seconds(30))
        host.register("orders", ClosureHandler { _, _ in })
        let consumer = ScriptedConsumer()
        let running = try Self.start(host, consumer)
        let waiting = TopicPartition("orders", 0)
        let fetching = TopicPartition("orders", 1)
        consumer.assign([waiting, fetching])
        consumer.deliverAssignment([waiting, fetching])
        // Partition 0's messages are on the broker, but its fetcher brings nothing (librdkafka left it
        // unstarted); partition 1 fetched and handled its messages and is caught up.
        consumer.committed.withLock { $0 = [waiting: 0, fetching: 0] }
        consumer.append(waiting, count: 5, deliver: false)
        consumer.append(fetching, count: 3)
        try await waitUntil("both running") {
            host.shards.count == 2 && host.shards.allSatisfy { $0.state == .running }
        }
        // Lag is known once the lag refresh (every 5 s of host time) ran.
        var ticks = 0
        while host.shards.first(where: { $0.topicPartition == waiting })?.lag != 5, ticks < 20 {
            try await clock.tick(host)
            ticks += 1
        }
        #expect(host.shards.first { $0.topicPartition == waiting }?.lag == 5)
        for _ in 1...8 {
            try await clock.tick(host)
            #expect(consumer.fetcherRestarts.value.isEmpty, "not before 10 s without progress")
        }
        for _ in 1...4 where consumer.fetcherRestarts.value.isEmpty { try await clock.tick(host) }
        #expect(
            consumer.fetcherRestarts.value == [waiting], "the partition with messages waiting and nothing fetched, once"
        )
        for _ in 1...5 { try await clock.tick(host) }
        #expect(consumer.fetcherRestarts.value == [waiting], "asked once per stall")
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test("a stall is reported when stallAfter of host time passes without progress, not before")
    func stallOnTheHostClock() async throws {
        let clock = ManualHostClock()
        // The handler holds offset 0 until released; the handler watchdog runs on real time (it exists to notice
        // real time passing), and on a loaded machine the 30 ticks outlasted the default handlerTimeout: the
        // shard crashed and restarted, which is progress, and no stall was reported. Not what this test is about.
        var orders = TopicConfiguration()
        orders.handlerTimeout = .seconds(3_600)
        let host = Self.host(["orders": orders], clock: clock, stallAfter: .seconds(30))
        let release = Locked(false)
        host.register(
            "orders",
            ClosureHandler { message, _ in
                while message.offset == 0, !release.value { try await Task.sleep(for: .milliseconds(2)) }
            })
        let (consumer, running, partition) = try Self.startAssigned(host)
        consumer.append(partition, count: 5)
        try await waitUntil("running with lag") { host.shards.first?.state == .running && host.shards.first?.lag == 5 }
        try await clock.tick(host)  // the first tick notes where progress stands
        let stoppedAt = clock.now
        for _ in 1..<30 {
            try await clock.tick(host)
            #expect(
                host.shards.first?.stalledSince == nil, "not stalled \(clock.now - stoppedAt) after progress stopped")
        }
        #expect(consumer.stallReports.value.isEmpty)
        try await clock.tick(host)
        #expect(host.shards.first?.stalledSince == stoppedAt, "stalled once 30 s of host time passed")
        #expect(consumer.stallReports.value == [partition], "the consumer is asked for its view of the partition, once")
        try await clock.tick(host)
        #expect(consumer.stallReports.value == [partition], "once per stall")
        release.withLock { $0 = true }
        try await waitUntil("done") { host.shards.first?.lag == 0 }
        try await clock.tick(host)
        #expect(host.shards.first?.stalledSince == nil, "progress clears it")
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test("a restart whose pipelines took nothing reads on without a seek (no committed-offset lookup in the loop)")
    func restartWithoutSeek() async throws {
        let host = Self.host()
        let handled = HandledMessages()
        host.register("orders", ClosureHandler { message, _ in handled.append(message) })
        let (consumer, running, partition) = try Self.startAssigned(host)
        try await waitUntil("running") { host.shards.first?.state == .running }
        host.operatorFlags.set(.topic("orders"), enabled: false)
        try await waitUntil("off") { host.shards.first?.state == .off }
        host.operatorFlags.unset(.topic("orders"))
        try await waitUntil("running again") { host.shards.first?.state == .running }
        consumer.append(partition, count: 5)
        try await waitUntil("handled") { handled.count == 5 }
        #expect(consumer.seeks.isEmpty, "nothing was taken, so nothing to seek back to")
        // Now a pipeline takes messages; after a flag cycle the next one seeks to where it got to.
        host.operatorFlags.set(.topic("orders"), enabled: false)
        try await waitUntil("off") { host.shards.first?.state == .off }
        host.operatorFlags.unset(.topic("orders"))
        try await waitUntil("running again") { host.shards.first?.state == .running }
        #expect(consumer.seeks == [TopicPartitionOffset(partition, offset: 5)])
        #expect(handled.count == 5, "nothing handled twice")
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test("a lost partition: the call in progress finishes, but nothing more is handled or stored")
    func lostStopsEverything() async throws {
        let host = Self.host()
        let inCall = Locked(false)
        let release = Locked(false)
        let handled = HandledMessages()
        host.register(
            "orders",
            ClosureHandler { message, _ in
                if message.offset == 2 {
                    inCall.withLock { $0 = true }
                    while !release.value { try? await Task.sleep(for: .milliseconds(1)) }
                }
                handled.append(message)
            })
        let (consumer, running, partition) = try Self.startAssigned(host)
        consumer.append(partition, count: 10)
        try await waitUntil("offset 2 is in its handler") { inCall.value }
        consumer.lose([partition])
        try await waitUntil("the shard is gone") { host.shards.isEmpty }
        // Stores that raced the loss (the consumer refuses them for a partition it no longer has) are not
        // the host's doing; from the moment the host knows, nothing more is stored.
        let storesBefore = consumer.storesWithoutAssignment
        release.withLock { $0 = true }
        try await Task.sleep(for: .milliseconds(300))  // give a wrongly running pipeline the chance to go on
        #expect(handled.all.value.map(\.offset) == [0, 1, 2], "nothing after the call in progress")
        #expect(
            consumer.storesWithoutAssignment == storesBefore, "nothing stored for a partition another member may own")
        #expect(!host.readiness.ready, "not ready while the session is lost")
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test("a fatal librdkafka error fails /healthz with the reason")
    func fatalErrorIsUnhealthy() async throws {
        let host = Self.host()
        host.register("orders", ClosureHandler { _, _ in })
        let consumer = ScriptedConsumer()
        let running = try Self.start(host, consumer)
        try await waitUntil("running") { host.health().healthy }
        consumer.raiseFatal(
            KafkaError(
                code: .librdkafka, message: "Fatal error: Broker: Static consumer fenced by other consumer",
                isFatal: true))
        let health = host.health()
        #expect(!health.healthy)
        #expect(
            health.reasons.contains { $0.hasPrefix("librdkafka raised a fatal error; the consumer must be restarted") })
        host.shutdown()
        consumer.finish()
        try await running.value
    }

    @Test("a poison key under ordering: key and the backoff preset: healthy keys are handled once across 10 restarts")
    func noRehandlingAcrossRestarts() async throws {
        let clock = ManualHostClock()
        var orders = TopicConfiguration()
        orders.ordering = .key
        orders.processors = 4
        orders.breaker = .backoff
        let host = Self.host(["orders": orders], clock: clock)
        let calls = Locked<[Int64: Int]>([:])
        host.register(
            "orders",
            ClosureHandler { message, _ in
                calls.withLock { $0[message.offset, default: 0] += 1 }
                if message.offset == 3 { throw TestFailure(description: "poison") }
            })
        let (consumer, running, partition) = try Self.startAssigned(host)
        consumer.append(partition, count: 200)
        for restart in 1...10 {
            try await waitUntil("crash \(restart)") {
                if case .backingOff(let attempt, _) = host.shards.first?.state { return attempt == restart }
                return false
            }
            clock.advance(by: .seconds(600))  // past any backoff (the preset's maximum is 5 min)
        }
        try await waitUntil("the poison was tried 11 times") { calls.value[3] == 11 }
        let rehandled = calls.value.filter { $0.key != 3 && $0.value > 1 }
        #expect(rehandled.isEmpty, "healthy messages handled again after restarts: \(rehandled.count)")
        #expect(calls.value.count > 100, "other keys ran ahead of the poison: \(calls.value.count) offsets handled")
        host.shutdown()
        consumer.finish()
        try await running.value
    }
}
