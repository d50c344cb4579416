import Logging
import SluiceTesting
import Synchronization
import Testing

@testable import SluiceKafka

@Suite(
    "KafkaConsumer against the embedded cluster (and tansu, for the tests that start theirs with TestClusters)",
    .timeLimit(.minutes(2)))
struct KafkaConsumerTests {
    @Test("a group consumer gets every message once, in partition order, and commits to the end")
    func everyMessageOnceInOrder() async throws {
        let cluster = try await TestClusters.start(topics: ["orders": 4], mockBrokers: 3)
        let produced = try await TestSupport.produce(cluster, topic: "orders", partitions: 4, count: 20_000)
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            logger: TestSupport.logger
        )
        try await consumer.subscribe(topics: ["orders"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("all 20,000 messages") { received.total >= 20_000 }
        try await Task.sleep(for: .milliseconds(300))
        #expect(received.total == 20_000)
        for (topicPartition, messages) in received.byPartition {
            let offsetsInOrder = messages.map(\.offset) == Array(0..<Int64(messages.count))
            #expect(offsetsInOrder, "offsets of \(topicPartition) are 0..<\(messages.count) in order")
            let values = messages.map { String(decoding: $0.value, as: UTF8.self) }
            let valuesInOrder = values == (0..<messages.count).map { "\(topicPartition.partition):\($0)" }
            #expect(valuesInOrder, "payload sequence of \(topicPartition) is in production order")
            #expect(messages.count == produced[topicPartition.partition])
        }
        try await consumer.commit()
        let committed = try await consumer.committedOffsets(for: (0..<4).map { TopicPartition("orders", $0) })
        for partition in Int32(0)..<4 {
            #expect(committed[TopicPartition("orders", partition)] == Int64(produced[partition]!))
        }
        await consumer.close()
        await driver.value
    }
}

extension KafkaConsumerTests {
    @Test("300 commits asked for at once share a few commit requests, and every caller gets its answer")
    func concurrentCommitsCoalesce() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["many": 4])
        try await TestSupport.produce(cluster, topic: "many", partitions: 4, count: 400)
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["many"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("all 400 messages") { received.total >= 400 }
        try consumer.storeOffsets((0..<4).map { TopicPartitionOffset(TopicPartition("many", $0), offset: 100) })
        // Each commit's answer now takes 1.5 s, so the 299 callers that ask after the first commit went out
        // ask while it is out. (How many rounds share requests must not depend on how fast tasks start.)
        try cluster.setRoundTripTime(broker: 1, .milliseconds(1_500))
        let before = consumer.shared.callerCommitsSent.load(ordering: .relaxed)
        let answered = Locked(0)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                if (try? await consumer.commit()) != nil { answered.withLock { $0 += 1 } }
            }
            try? await waitUntil("the first caller's commit is out") {
                consumer.shared.callerCommitsSent.load(ordering: .relaxed) == before + 1
            }
            for _ in 1..<300 {
                group.addTask {
                    if (try? await consumer.commit()) != nil { answered.withLock { $0 += 1 } }
                }
            }
        }
        let sent = consumer.shared.callerCommitsSent.load(ordering: .relaxed) - before
        try cluster.setRoundTripTime(broker: 1, .zero)
        #expect(answered.withLock { $0 } == 300)
        // The first caller's request, then one for the 299 that asked while it was out (a second round
        // only if starting 299 tasks took longer than the 1.5 s answer); one per caller before.
        #expect(sent >= 2 && sent <= 3, "\(sent) commit requests for 300 callers")
        let committed = try await consumer.committedOffsets(for: (0..<4).map { TopicPartition("many", $0) })
        #expect(committed.values.allSatisfy { $0 == 100 } && committed.count == 4)
        await consumer.close()
        await driver.value
    }

    @Test("pausing one partition stops only it; repeated sets never rewind (librdkafka 2.0.2 hazard)")
    func pauseStopsOnlyThatPartition() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["payments": 2])
        try await TestSupport.produce(cluster, topic: "payments", partitions: 2, count: 2_000)
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            logger: TestSupport.logger
        )
        try await consumer.subscribe(topics: ["payments"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        let paused = TopicPartition("payments", 0)
        let running = TopicPartition("payments", 1)
        try await waitUntil("first 2,000") { received.total == 2_000 }

        await consumer.setPauseReasons([.operator], for: paused)
        #expect(consumer.pauseReasons(for: paused) == [.operator])
        // Setting a partition's reasons again, or telling a fetching partition it has none, must change
        // nothing; in librdkafka 2.0.2 a resume of a partition that is not paused rewinds and redelivers.
        for _ in 0..<10 {
            await consumer.setPauseReasons([.operator], for: paused)
            await consumer.setPauseReasons([], for: running)
        }
        try await TestSupport.produce(cluster, topic: "payments", partitions: 2, count: 20_000)
        try await waitUntil("the running partition reaches 11,000") { received.count(running) == 11_000 }
        try await Task.sleep(for: .milliseconds(500))
        #expect(received.count(paused) == 1_000, "the paused partition received nothing more")

        await consumer.setPauseReasons([], for: paused)
        // Only the consumer's own flow control may remain (its buffer may be full of what it fetched).
        #expect(consumer.pauseReasons(for: paused).isSubset(of: [.flowControl]))
        try await waitUntil("the paused partition catches up") { received.count(paused) == 11_000 }
        try await Task.sleep(for: .milliseconds(300))
        received.expectEveryOffsetOnceInOrder()
        await consumer.close()
        await driver.value
    }

    @Test("pause reasons are desired state: the partition fetches only once its whole set is empty")
    func pauseReasonsAreASet() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["flags": 1])
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            initialPauseReasons: { _ in [.flag] },
            logger: TestSupport.logger
        )
        try await consumer.subscribe(topics: ["flags"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        let partition = TopicPartition("flags", 0)
        try await waitUntil("assignment") { consumer.assignment.contains(partition) }
        #expect(consumer.pauseReasons(for: partition) == [.flag], "paused from assignment, before any fetch")
        try await TestSupport.produce(cluster, topic: "flags", partitions: 1, count: 100)
        await consumer.setPauseReasons([.breaker], for: partition)
        #expect(consumer.pauseReasons(for: partition) == [.breaker], "the set replaces the initial one")
        try await Task.sleep(for: .milliseconds(700))
        #expect(received.total == 0, "still paused by the breaker")
        await consumer.setPauseReasons([], for: partition)
        try await waitUntil("all 100 after the last reason went") { received.total == 100 }
        await consumer.close()
        await driver.value
    }

    @Test("only stored offsets are committed: the next member of the group resumes exactly there")
    func onlyStoredOffsetsAreCommitted() async throws {
        let cluster = try await TestClusters.start(topics: ["ledger": 1])
        try await TestSupport.produce(cluster, topic: "ledger", partitions: 1, count: 100)
        let group = TestSupport.uniqueName("g")
        let partition = TopicPartition("ledger", 0)

        let first = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: group), logger: TestSupport.logger)
        try await first.subscribe(topics: ["ledger"])
        let firstReceived = ReceivedMessages()
        let firstDriver = Task { await drive(first, into: firstReceived, storeOffsets: false) }
        try await waitUntil("all 100 read") { firstReceived.total == 100 }
        // Only the first 40 messages are "done".
        try first.storeOffsets([TopicPartitionOffset(partition, offset: 40)])
        try await first.commit()
        await first.close()
        await firstDriver.value

        let second = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: group), logger: TestSupport.logger)
        try await second.subscribe(topics: ["ledger"])
        let secondReceived = ReceivedMessages()
        let secondDriver = Task { await drive(second, into: secondReceived) }
        try await waitUntil("the remaining 60") { secondReceived.total == 60 }
        #expect(secondReceived.byPartition[partition]?.first?.offset == 40)
        let committed = try await second.committedOffsets(for: [partition])
        #expect(committed[partition].map { $0 >= 40 } == true)
        await second.close()
        await secondDriver.value
    }

    @Test("a rebalance releases revoked partitions only after their owner says done")
    func revokedPartitionsWaitForTheirOwner() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["jobs": 4])
        try await TestSupport.produce(cluster, topic: "jobs", partitions: 4, count: 400)
        let group = TestSupport.uniqueName("g")
        let clock = ContinuousClock()
        // The embedded cluster rejects commits made while the group joins, and librdkafka then calls the
        // assignment lost; keep periodic commits out of the join window (real Kafka accepts them).
        var configuration = TestSupport.consumerConfiguration(cluster, group: group)
        configuration.commitInterval = .seconds(60)
        let doneAt = Locked<ContinuousClock.Instant?>(nil)
        let revokedPartitions = Locked<[TopicPartition]>([])

        let first = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await first.subscribe(topics: ["jobs"])
        let firstReceived = ReceivedMessages()
        let firstDriver = Task {
            for await event in first.events {
                switch event {
                case .assigned(let partitions):
                    for topicPartition in partitions {
                        guard let messages = first.messages(for: topicPartition) else { continue }
                        Task {
                            for await batch in messages {
                                firstReceived.append(batch)
                                try? first.storeOffsets([
                                    TopicPartitionOffset(topicPartition, offset: batch.last!.offset + 1)
                                ])
                            }
                        }
                    }
                case .revoked(let revocation):
                    revokedPartitions.withLock { $0 = revocation.partitions }
                    // The owner takes 2 s to finish its in-flight work.
                    Task {
                        try await Task.sleep(for: .seconds(2))
                        doneAt.withLock { $0 = clock.now }
                        revocation.done()
                    }
                default:
                    break
                }
            }
        }
        try await waitUntil("the first member reads everything") { firstReceived.total == 400 }
        // Commit in steady state: the embedded coordinator may reject commits made during the rebalance
        // (real Kafka accepts them), which this test is not about.
        try await first.commit()

        let assignedAt = Locked<[TopicPartition: ContinuousClock.Instant]>([:])
        let second = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await second.subscribe(topics: ["jobs"])
        let secondReceived = ReceivedMessages()
        let secondDriver = Task {
            await drive(second, into: secondReceived) { event in
                if case .assigned(let partitions) = event {
                    assignedAt.withLock { for partition in partitions { $0[partition] = clock.now } }
                }
            }
        }
        try await waitUntil("the second member gets partitions", timeout: .seconds(40)) {
            !assignedAt.withLock { $0.isEmpty }
        }
        let revoked = revokedPartitions.withLock { $0 }
        let moved = assignedAt.withLock { $0 }
        #expect(!revoked.isEmpty)
        #expect(Set(moved.keys).isSubset(of: Set(revoked)))
        let released = try #require(doneAt.withLock { $0 })
        for (partition, instant) in moved {
            #expect(instant >= released, "\(partition) was assigned to the new member only after done()")
        }
        // Everything was committed: the second member starts at the end, reading nothing again.
        try await Task.sleep(for: .milliseconds(500))
        #expect(secondReceived.total == 0)
        await second.close()
        await first.close()
        await firstDriver.value
        await secondDriver.value
    }
}

extension KafkaConsumerTests {
    @Test("a slow reader pauses its partition through flow control and still gets every message once, in order")
    func flowControlLosesNothing() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["slow": 2])
        try await TestSupport.produce(cluster, topic: "slow", partitions: 2, count: 6_000)
        var configuration = TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g"))
        configuration.partitionBufferMessages = 200
        configuration.maxBatchSize = 50
        let consumer = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["slow"])
        let received = ReceivedMessages()
        let sawFlowPause = Locked(false)
        let driver = Task {
            await withTaskGroup(of: Void.self) { group in
                for await event in consumer.events {
                    guard case .assigned(let partitions) = event else { continue }
                    for topicPartition in partitions {
                        guard let messages = consumer.messages(for: topicPartition) else { continue }
                        group.addTask {
                            for await batch in messages {
                                if consumer.pauseReasons(for: topicPartition).contains(.flowControl) {
                                    sawFlowPause.withLock { $0 = true }
                                }
                                received.append(batch)
                                try? await Task.sleep(for: .milliseconds(2))
                            }
                        }
                    }
                }
            }
        }
        try await waitUntil("all 6,000 through a 200-message buffer") { received.total >= 6_000 }
        try await Task.sleep(for: .milliseconds(300))
        #expect(received.total == 6_000)
        #expect(sawFlowPause.withLock { $0 }, "the buffer filled and the partition was paused")
        received.expectEveryOffsetOnceInOrder()
        await consumer.close()
        await driver.value
    }
}

extension KafkaConsumerTests {
    @Test("close is bounded when the cluster has gone away")
    func closeWithoutACluster() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["gone": 2])
        try await TestSupport.produce(cluster, topic: "gone", partitions: 2, count: 100)
        var configuration = TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g"))
        configuration.closeTimeout = .seconds(3)
        let consumer = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["gone"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("all 100") { received.total == 100 }
        cluster.shutdown()
        // Without closeTimeout librdkafka would wait for brokers that never come back.
        #expect(
            await TestSupport.returnsFirst(consumer.close, before: .seconds(60)), "close returned with the cluster gone"
        )
        await driver.value
    }
}

extension KafkaConsumerTests {
    /// The group coordinator answers every request a minute late, so neither the final commit nor the leave
    /// handshake can finish: `close()` still returns (after `closeTimeout`) with every sequence ended.
    @Test("close does not wait for a slow group coordinator")
    func closeWithASlowCoordinator() async throws {
        let cluster = try EmbeddedKafkaCluster(brokers: 2, topics: [:])
        try cluster.createTopic("slowgroup", partitions: 2)
        for partition: Int32 in 0..<2 {
            try cluster.setPartitionLeader(TopicPartition("slowgroup", partition), broker: 1)
        }
        let group = TestSupport.uniqueName("slow")
        try cluster.setGroupCoordinator(group: group, broker: 2)
        try await TestSupport.produce(cluster, topic: "slowgroup", partitions: 2, count: 100)
        var configuration = TestSupport.consumerConfiguration(cluster, group: group)
        configuration.closeTimeout = .seconds(2)
        let consumer = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["slowgroup"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("all 100") { received.total == 100 }
        try cluster.setRoundTripTime(broker: 2, .seconds(60))
        // The coordinator's answers to the final commit and the leave come a minute late: close must not wait.
        #expect(
            await TestSupport.returnsFirst(consumer.close, before: .seconds(45)),
            "close returned before the coordinator answered")
        #expect(
            await TestSupport.returnsFirst({ await driver.value }, before: .seconds(1)),
            "every sequence had ended when close returned")
    }
}

extension KafkaConsumerTests {
    @Test("seek to the committed offset rewinds a paused partition to it; resume reads from there")
    func seekToCommitted() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["replay": 1])
        try await TestSupport.produce(cluster, topic: "replay", partitions: 1, count: 100)
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["replay"])
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received, storeOffsets: false) }
        let partition = TopicPartition("replay", 0)
        try await waitUntil("all 100") { received.total == 100 }
        try consumer.storeOffsets([TopicPartitionOffset(partition, offset: 60)])
        try await consumer.commit()
        await consumer.setPauseReasons([.breaker], for: partition)
        try await consumer.seek(partition, to: KafkaConsumer.committedOffset)
        await consumer.setPauseReasons([], for: partition)
        try await waitUntil("the 40 after the committed offset again") { received.total == 140 }
        #expect(received.byPartition[partition]?.suffix(40).map(\.offset) == Array(60..<100))
        await consumer.close()
        await driver.value
    }
}

extension KafkaConsumerTests {
    @Test("a failed periodic commit is retried with backoff and counted, without new offsets being stored")
    func periodicCommitRetried() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["ledger": 1])
        try await TestSupport.produce(cluster, topic: "ledger", partitions: 1, count: 100)
        let partition = TopicPartition("ledger", 0)
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["ledger"])
        try await waitUntil("assignment") { consumer.assignment.contains(partition) }
        // The next three commits fail; nothing is stored after the last message, so only a retry can commit it.
        cluster.pushRequestErrors(
            apiKey: .offsetCommit,
            errors: Array(repeating: KafkaErrorCode(name: "INVALID_COMMIT_OFFSET_SIZE")!, count: 3))
        let received = ReceivedMessages()
        let driver = Task { await drive(consumer, into: received) }
        try await waitUntil("all 100") { received.total == 100 }
        try await waitUntil("the stored offset is committed after the failures") {
            try await consumer.committedOffsets(for: [partition])[partition] == 100
        }
        #expect(consumer.commitFailureCount >= 3)
        await consumer.close()
        await driver.value
    }
}

extension KafkaConsumerTests {
    @Test("commands sent after the consumer's thread is gone are answered at once, not left waiting")
    func commandsAfterClose() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["late": 1])
        let consumer = try KafkaConsumer(
            configuration: TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g")),
            logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["late"])
        let partition = TopicPartition("late", 0)
        try await waitUntil("assignment") { consumer.assignment.contains(partition) }
        await consumer.close()
        // Long enough for the owner thread to finish destroying the client and take its last commands.
        try await Task.sleep(for: .seconds(2))
        #expect(
            await TestSupport.returnsFirst(
                { await consumer.setPauseReasons([.operator], for: partition) }, before: .seconds(30)))
        #expect(
            await TestSupport.returnsFirst({ _ = try? await consumer.seek(partition, to: 0) }, before: .seconds(30)))
        #expect(
            await TestSupport.returnsFirst({ _ = try? await consumer.commit(timeout: .zero) }, before: .seconds(30)))
        cluster.shutdown()
    }
}
