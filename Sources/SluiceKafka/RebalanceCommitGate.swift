/// Keeps periodic and caller commits out of the group's rebalances.
///
/// librdkafka before 2.10 declares the whole assignment lost when a commit is answered with
/// `ILLEGAL_GENERATION` (librdkafka #4059, fixed by #4908), and every commit made while the member waits for
/// its JoinGroup answer is: librdkafka queues it behind the blocking JoinGroup and sends it, with the old
/// generation, after the join completed. The member then drops its partitions instead of revoking them,
/// commits nothing more, and the next owner handles everything since the last commit again (measured here:
/// 15,000 duplicates when a second host joins and leaves at 2,000 msg/s).
///
/// The application cannot see librdkafka's join state, but it can see the rebalance's edges, and a
/// cooperative rebalance has a fixed shape (librdkafka's `rd_kafka_cgrp_handle_assignment_cooperative` and
/// `rd_kafka_cgrp_incr_unassign_done`):
///
/// - A commit answered `REBALANCE_IN_PROGRESS` (or `ILLEGAL_GENERATION`, `UNKNOWN_MEMBER_ID`) means the
///   group is rebalancing: the member is about to rejoin. The rebalance ends with the next assign event.
/// - A revoke event (after a SyncGroup) is followed by an assign event right after the revoked partitions are
///   released, then a second JoinGroup, then a second assign event that ends the rebalance.
/// - A lost assignment is released and followed by a rejoin, then an assign event.
///
/// Commits are held from the first edge to the assign event that ends the rebalance; the commit of revoked
/// partitions before their release still runs (the generation is current then). A deadline guards against an
/// assign event that never comes.
struct RebalanceCommitGate: Sendable, Equatable {
    /// Assign events still to come before the group is steady again.
    private(set) var assignsPending = 0
    /// The member is (re)joining, as librdkafka's join state says (`init`, `wait-metadata`, `wait-join`).
    private(set) var joining = false
    /// When the hold gives up waiting.
    private(set) var deadline: ContinuousClock.Instant?
    /// The longest a hold lasts without its closing assign event.
    let limit: Duration

    init(limit: Duration) { self.limit = limit }

    /// Whether commits must wait now.
    func isHolding(now: ContinuousClock.Instant) -> Bool {
        if joining { return true }
        guard assignsPending > 0, let deadline else { return false }
        return now < deadline
    }

    /// librdkafka's group join state changed (from its `CGRPJOINSTATE` debug log). Exact where the edges
    /// below are a heuristic: a heartbeat that finds the group rebalancing makes the member rejoin without
    /// any edge the application can see.
    mutating func joinStateChanged(to state: String) {
        joining = ["init", "wait-metadata", "wait-join"].contains(state)
    }

    /// The new join state in a librdkafka `CGRPJOINSTATE` log line
    /// (`Group "g" changed join state steady -> init (state up)`), or nil.
    static func joinState(inLogLine line: String) -> String? {
        let marker = "changed join state "
        guard let start = line.indices.first(where: { line[$0...].hasPrefix(marker) }) else { return nil }
        let transition = line[line.index(start, offsetBy: marker.count)...].split(separator: " ")
        guard transition.count >= 3, transition[1] == "->" else { return nil }
        return String(transition[2])
    }

    /// Whether the hold ran out without the assign event that ends it (once per hold).
    mutating func expired(now: ContinuousClock.Instant) -> Bool {
        guard assignsPending > 0, let deadline, now >= deadline else { return false }
        assignsPending = 0
        self.deadline = nil
        return true
    }

    /// A commit was refused because the group is rebalancing.
    mutating func rebalanceSeen(now: ContinuousClock.Instant) {
        hold(assigns: max(assignsPending, 1), now: now)
    }

    /// A revoke event: the follow-on assign, then the assign after the second join.
    mutating func revoked(now: ContinuousClock.Instant) {
        hold(assigns: 2, now: now)
    }

    /// The assignment was lost: the member rejoins, then an assign event comes.
    mutating func lost(now: ContinuousClock.Instant) {
        hold(assigns: 1, now: now)
    }

    /// An assign event.
    mutating func assigned() {
        assignsPending = max(assignsPending - 1, 0)
        if assignsPending == 0 { deadline = nil }
    }

    private mutating func hold(assigns: Int, now: ContinuousClock.Instant) {
        if assignsPending == 0 || deadline == nil { deadline = now + limit }
        assignsPending = assigns
    }
}
