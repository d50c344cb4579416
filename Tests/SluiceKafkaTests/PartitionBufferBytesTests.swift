import SluiceTesting
import Synchronization
import Testing

@testable import SluiceKafka

/// Partition buffers bounded by bytes (`partitionBufferBytes`, a host's memory budget), not only by message
/// count: large messages pause a partition long before 4,000 of them are buffered.
@Suite("Partition buffers bounded by bytes")
struct PartitionBufferBytesTests {
    static func messages(_ count: Int, size: Int, from offset: Int64 = 0) -> [ConsumedMessage] {
        (0..<count).map { index in
            ConsumedMessage(
                topic: "t", partition: 0, offset: offset + Int64(index),
                value: KafkaBytes([UInt8](repeating: 7, count: size)))
        }
    }

    @Test("the buffer is full at its byte share, far below its message capacity; it asks for a resume at half")
    func fullAtByteShare() async throws {
        let share = PartitionByteShare(total: 2 << 20)
        share.assigned(2)  // 1 MiB each
        let resumes = Locked(0)
        let channel = PartitionChannel(topicPartition: TopicPartition("t", 0), capacity: 4_000, byteShare: share) { _ in
            resumes.withLock { $0 += 1 }
        }
        #expect(channel.room == 4_000, "nothing known of the sizes yet: the message bound")
        let footprint = (64 << 10) + ConsumedMessage.bookkeepingBytes
        #expect(channel.push(Self.messages(10, size: 64 << 10)) == false)  // 0.63 MiB
        #expect(
            channel.room == ((1 << 20) - 10 * footprint) / footprint, "the rest of the share at the average size seen")
        #expect(channel.push(Self.messages(7, size: 64 << 10, from: 10)) == true, "1 MiB and more: full")
        #expect(channel.room == 0)
        #expect(channel.markFlowPaused())
        var iterator = KafkaPartitionMessages(channel: channel).makeAsyncIterator()
        #expect(await iterator.next()?.count == 10)
        #expect(channel.buffered.bytes == 7 * footprint)
        #expect(resumes.withLock { $0 } == 1, "under half of the share left: fetching may resume")
    }

    @Test("an empty buffer takes one message larger than the whole share; without a byte budget only counts bound it")
    func oversizedAndUnbounded() async throws {
        let share = PartitionByteShare(total: 100_000)
        let channel = PartitionChannel(topicPartition: TopicPartition("t", 0), capacity: 4_000, byteShare: share) { _ in
        }
        #expect(channel.push(Self.messages(1, size: 1 << 20)) == true)
        var iterator = KafkaPartitionMessages(channel: channel).makeAsyncIterator()
        _ = await iterator.next()
        #expect(channel.room == 1, "empty again: room for one, however large")

        let unbounded = PartitionChannel(topicPartition: TopicPartition("t", 0), capacity: 4_000) { _ in }
        #expect(unbounded.push(Self.messages(100, size: 1 << 20)) == false, "100 MiB, 100 messages: under the count")
        #expect(unbounded.room == 3_900)
        #expect(KafkaPartitionMessages(channel: unbounded).bufferByteShare == nil)
    }

    @Test("the share follows the assignment: the budget divided by the partitions assigned")
    func shareFollowsAssignment() {
        let share = PartitionByteShare(total: 120 << 20)
        share.assigned(0)
        #expect(share.perPartition == 120 << 20)
        share.assigned(3)
        #expect(share.perPartition == 40 << 20)
        share.assigned(120)
        #expect(share.perPartition == 1 << 20)
        #expect(PartitionByteShare(total: nil).perPartition == nil)
    }

    @Test(
        "64 KiB messages through a 256 KiB share per partition: every message once, in order, and no buffer past its share and one batch"
    )
    func largeMessagesEndToEnd() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["large": 2])
        let size = 64 << 10
        // 60 per partition: the mock keeps 5 MiB of a partition's log and drops older records.
        let value = [UInt8](repeating: 1, count: size)
        try await cluster.produce(
            (0..<120).map { index in
                ProducerRecord(topic: "large", partition: Int32(index % 2), key: Array("k\(index)".utf8), value: value)
            }, logger: TestSupport.logger)
        var configuration = TestSupport.consumerConfiguration(cluster, group: TestSupport.uniqueName("g"))
        configuration.partitionBufferBytes = 512 << 10
        configuration.maxBatchSize = 8
        let consumer = try KafkaConsumer(configuration: configuration, logger: TestSupport.logger)
        try await consumer.subscribe(topics: ["large"])
        let received = ReceivedMessages()
        let mostBuffered = Locked(0)
        let sawFlowPause = Locked(false)
        // A slow reader: the buffer fills to its share while it sleeps.
        let driver = Task {
            await drive(
                consumer, into: received, storeOffsets: false,
                onBatch: { topicPartition, _ in
                    let buffered = consumer.shared.channels.withLock { $0[topicPartition] }?.buffered.bytes ?? 0
                    mostBuffered.withLock { $0 = max($0, buffered) }
                    if consumer.pauseReasons(for: topicPartition).contains(.flowControl) {
                        sawFlowPause.withLock { $0 = true }
                    }
                    try? await Task.sleep(for: .milliseconds(5))
                })
        }
        let all = await eventually(timeout: .seconds(60)) { received.total >= 120 }
        #expect(
            all,
            "received \(received.total) of 120; most buffered \(mostBuffered.withLock { $0 }); \(received.byPartition.mapValues { $0.map(\.offset) })"
        )
        #expect(received.total == 120)
        received.expectEveryOffsetOnceInOrder()
        #expect(sawFlowPause.withLock { $0 }, "the byte share filled and the partition was paused")
        let bound = (256 << 10) + 8 * (size + ConsumedMessage.bookkeepingBytes + 64)
        #expect(
            mostBuffered.withLock { $0 } <= bound,
            "a partition's buffer stayed within its share and one batch (60 messages, 3.8 MiB, were there to take)")
        await consumer.close()
        await driver.value
    }
}
