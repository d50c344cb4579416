import Testing

@testable import SluiceKafka

@Suite("Commits held during rebalances")
struct RebalanceCommitGateTests {
    let start = ContinuousClock.now

    @Test("a cooperative rebalance with revocations holds commits until the assign after the second join")
    func revokeThenTwoAssigns() {
        var gate = RebalanceCommitGate(limit: .seconds(30))
        #expect(!gate.isHolding(now: start))
        gate.rebalanceSeen(now: start)  // a commit answered REBALANCE_IN_PROGRESS
        #expect(gate.isHolding(now: start))
        gate.revoked(now: start)  // SyncGroup gave a revocation
        gate.assigned()  // the assign that follows the revoke, before the second JoinGroup
        #expect(gate.isHolding(now: start), "the second join is still to come")
        gate.assigned()  // after the second join
        #expect(!gate.isHolding(now: start))
    }

    @Test("a rebalance without revocations ends at the next assign; a lost assignment at the assign after the rejoin")
    func singleAssign() {
        var gate = RebalanceCommitGate(limit: .seconds(30))
        gate.rebalanceSeen(now: start)
        gate.rebalanceSeen(now: start)
        gate.assigned()
        #expect(!gate.isHolding(now: start))
        gate.lost(now: start)
        #expect(gate.isHolding(now: start))
        gate.assigned()
        #expect(!gate.isHolding(now: start))
        gate.assigned()
        #expect(!gate.isHolding(now: start), "extra assigns do not go negative")
        gate.rebalanceSeen(now: start)
        #expect(gate.isHolding(now: start))
    }

    @Test("a hold whose closing assign never comes ends at its limit, once")
    func limit() {
        var gate = RebalanceCommitGate(limit: .seconds(30))
        gate.revoked(now: start)
        #expect(gate.isHolding(now: start + .seconds(29)))
        let early = gate.expired(now: start + .seconds(29))
        #expect(!early)
        #expect(!gate.isHolding(now: start + .seconds(30)))
        let atLimit = gate.expired(now: start + .seconds(30))
        #expect(atLimit)
        let again = gate.expired(now: start + .seconds(31))
        #expect(!again)
        gate.rebalanceSeen(now: start + .seconds(40))
        #expect(gate.isHolding(now: start + .seconds(60)), "a new hold gets a new limit")
    }

    @Test("librdkafka's join state, read from its CGRPJOINSTATE log line, holds commits exactly while the member joins")
    func joinState() {
        #expect(
            RebalanceCommitGate.joinState(inLogLine: "Group \"g\" changed join state steady -> init (state up)")
                == "init")
        #expect(
            RebalanceCommitGate.joinState(inLogLine: "Group \"a -> b\" changed join state init -> wait-join (state up)")
                == "wait-join")
        #expect(RebalanceCommitGate.joinState(inLogLine: "Group \"g\" received op OFFSET_COMMIT") == nil)
        var gate = RebalanceCommitGate(limit: .seconds(30))
        for (state, holds) in [
            ("init", true), ("wait-metadata", true), ("wait-join", true), ("wait-sync", false),
            ("wait-assign-call", false),
            ("steady", false),
        ] {
            gate.joinStateChanged(to: state)
            #expect(gate.isHolding(now: start) == holds, "\(state)")
        }
    }
}
