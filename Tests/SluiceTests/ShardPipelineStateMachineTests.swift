import SluiceKafka
import SluiceTesting
import Testing

@testable import Sluice

@Suite("A pipeline's bookkeeping: what is taken, what is done, stop and crash")
struct ShardPipelineStateMachineTests {
    typealias Machine = ShardPipeline.StateMachine

    static func messages(_ offsets: [Int64]) -> ArraySlice<Message> {
        offsets.map { Message(topic: "orders", partition: 0, offset: $0, value: KafkaBytes([1])) }[...]
    }

    @Test("take: at most what fits under the limit and the rate allows, at least one; the watermark is the first")
    func take() {
        var machine = Machine()
        let taken = machine.take(Self.messages([10, 11, 12, 13, 14]), limit: 3, allowed: 100)
        #expect(taken == Machine.Taken(count: 3, notHandedOut: [], rewound: false))
        #expect(machine.inFlight == 3 && machine.watermark == 10)
        let full = machine.take(Self.messages([13, 14]), limit: 3, allowed: 100)
        #expect(full.count == 1, "a full pipeline still takes one: the dispatcher waited for room already")
        let limited = machine.take(Self.messages([14, 15, 16]), limit: 100, allowed: 2)
        #expect(limited.count == 2, "a rate limit allows two")
        #expect(machine.inFlight == 6 && !machine.hasRoom(under: 10) && machine.hasRoom(under: 12))
    }

    @Test("offsets done before are completed at once and not handed out; a rewind is not taken twice")
    func alreadyDoneAndRewound() {
        var machine = Machine(alreadyDone: [11, 12])
        let taken = machine.take(Self.messages([10, 11, 12, 13]), limit: 100, allowed: 100)
        #expect(taken == Machine.Taken(count: 4, notHandedOut: [11, 12], rewound: false))
        #expect(machine.redeliveriesSkipped == 2 && machine.inFlight == 2 && machine.watermark == 10)
        #expect(machine.doneAboveWatermark == [11, 12])
        let again = machine.take(Self.messages([12, 13, 14]), limit: 100, allowed: 100)
        #expect(again == Machine.Taken(count: 3, notHandedOut: [12, 13], rewound: true))
        #expect(machine.inFlight == 3, "13 is not begun twice")
        machine.learnedDone([20])
        #expect(machine.doneAboveWatermark == [11, 12, 20], "what the group's last owner did counts as done above")
    }

    @Test("completions count by kind and move the watermark past everything done below it")
    func completions() {
        var machine = Machine()
        _ = machine.take(Self.messages([0, 1, 2, 3, 4]), limit: 100, allowed: 100)
        machine.completed([1, 2], as: .processed)
        #expect(machine.watermark == 0 && machine.doneAboveWatermark == [1, 2])
        machine.completed([0], as: .skipped)
        #expect(machine.watermark == 3)
        machine.completed([3], as: .deadLettered)
        machine.failedAttempt()
        machine.failedAttempt()
        #expect(machine.counters == ShardPipeline.Counters(processed: 2, failed: 2, skipped: 1, deadLettered: 1))
        #expect(machine.progress == 4 && machine.inFlight == 1 && machine.restartOffset == 4)
        machine.completed([3, 99], as: .processed)
        #expect(machine.watermark == 4, "an offset done twice or never taken moves nothing")
    }

    @Test("the first crash stands; a stop or a crash halts; an arriving batch after it is dropped")
    func stopAndCrash() {
        var machine = Machine()
        #expect(!machine.arrived(first: 7) && machine.restartOffset == 7, "the first offset taken, begun or not")
        #expect(!machine.arrived(first: 9) && machine.firstTaken == 7)
        let first = ShardCrash(reason: .handlerTimeout(.seconds(1)), offset: 7)
        #expect(machine.crashed(first) == .crashNow(first))
        #expect(machine.crashed(ShardCrash(reason: .handlerTimeout(.seconds(2)), offset: 8)) == .alreadyCrashed)
        #expect(machine.crash == first && machine.halted && machine.arrived(first: 10))
        var stopped = Machine()
        stopped.stop()
        #expect(stopped.halted && stopped.crash == nil && stopped.arrived(first: 1))
    }

    @Test("lanes: the last one to end says so")
    func lanes() {
        var machine = Machine()
        machine.lanesStarted(3)
        #expect(!machine.laneEnded() && !machine.laneEnded() && machine.laneEnded())
        #expect(machine.lanesRunning == 0 && machine.laneEnded(), "never below zero")
    }

    /// Random runs of the events a pipeline makes: batches (with gaps, rewinds and offsets done before), completions
    /// in any order and of any kind, failures, a stop or crashes. Checked against a plain model after every event.
    @Test("random sequences: the watermark is the lowest offset not done, nothing is done twice, counters add up")
    func randomSequences() {
        for seed in UInt64(0)..<1_000 {
            var random = InputMutator.Generator(state: seed)
            let done = Set((0..<Int64(random.next() % 4)).map { _ in Int64(random.next() % 40) })
            var machine = Machine(alreadyDone: done)
            var begun: [Int64] = []
            var completed = Set<Int64>()
            var next: Int64 = 0
            var counted = 0
            var firstCrash: ShardCrash?
            for step in 0..<60 {
                switch random.next() % 6 {
                case 0, 1:
                    // A batch, sometimes with a gap, sometimes rewound a little.
                    var start = next + Int64(random.next() % 3)
                    if random.next() % 8 == 0 { start = max(0, next - Int64(random.next() % 4)) }
                    let offsets = (0..<Int64(1 + random.next() % 5)).map { start + $0 }
                    let limit = Int(1 + random.next() % 8)
                    _ = machine.arrived(first: offsets[0])
                    let taken = machine.take(Self.messages(offsets), limit: limit, allowed: Int(1 + random.next() % 6))
                    for offset in offsets.prefix(taken.count) where offset >= next {
                        begun.append(offset)
                        next = offset + 1
                        if done.contains(offset) { completed.insert(offset) }
                    }
                    #expect(taken.notHandedOut.allSatisfy { $0 < next }, "seed \(seed) step \(step)")
                case 2, 3:
                    let open = begun.filter { !completed.contains($0) }
                    guard !open.isEmpty else { continue }
                    let some = open.filter { _ in random.next() % 2 == 0 }
                    let kinds: [Machine.Completion] = [.processed, .skipped, .deadLettered]
                    machine.completed(some, as: kinds[Int(random.next() % 3)])
                    completed.formUnion(some)
                    counted += some.count
                case 4:
                    machine.failedAttempt()
                default:
                    if random.next() % 2 == 0 {
                        machine.stop()
                    } else {
                        let crash = ShardCrash(reason: .handlerTimeout(.seconds(1)), offset: Int64(step))
                        if firstCrash == nil { firstCrash = crash }
                        _ = machine.crashed(crash)
                    }
                }
                let lowestOpen = begun.first { !completed.contains($0) }
                let expected = lowestOpen ?? begun.last.map { $0 + 1 }
                #expect(machine.watermark == expected, "seed \(seed) step \(step): the lowest offset not done")
                #expect(machine.inFlight == begun.count - completed.count, "seed \(seed) step \(step)")
                #expect(machine.progress == counted, "seed \(seed) step \(step): counted once each")
                #expect(machine.crash == firstCrash, "seed \(seed) step \(step): the first crash stands")
            }
        }
    }
}
