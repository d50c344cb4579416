import Logging
import Metrics
import SluiceKafka

/// Assignment and revocation: shards made for assigned partitions (tripped or held where the group says so), what the last owners finished read beside the loop, revocations released once their shards drained, lost partitions dropped.
extension SupervisorLoop {
    /// Desired state before acting: the control topic read to its end as of now, so a partition's trip written by
    /// its last owner moments ago is known before its shard starts here. That read waits on the network (up to 5 s),
    /// so it runs beside the loop, which goes on with every other shard's events meanwhile; the shards start when
    /// it is done (``assignRead(_:group:)``). Without a control plane they start at once.
    mutating func assigned(_ partitions: [TopicPartition], group: inout DiscardingTaskGroup) async {
        // The progress this process keeps for a successor names its cluster and group (known by now), so it is
        // never used against another.
        if let progress = crashContainment?.journal.progress, !progress.hasOwner, let cluster = consumer.clusterID {
            progress.own(by: StateOwner(cluster: cluster, group: configuration.kafka.group))
        }
        guard let control else {
            await start(partitions, group: &group)
            return
        }
        nextIdentifier += 1
        let identifier = nextIdentifier
        awaitingDesiredState[identifier] = partitions
        group.addTask { [input, logger] in
            if !(await control.catchUp(timeout: .seconds(5))) {
                logger.warning(
                    "the control topic could not be read to its end before starting the assigned shards; starting them with what was read",
                    metadata: [
                        "kafka.partitions": "\(partitions)", "sluice.controlPosition": "\(control.appliedPosition)",
                    ])
            }
            input.yield(.desiredStateRead(identifier))
        }
    }

    /// Starts the shards of an assignment whose desired state was read, except those revoked or lost meanwhile.
    mutating func assignRead(_ identifier: UInt64, group: inout DiscardingTaskGroup) async {
        guard let partitions = awaitingDesiredState.removeValue(forKey: identifier) else { return }
        await start(partitions, group: &group)
    }

    private mutating func start(_ partitions: [TopicPartition], group: inout DiscardingTaskGroup) async {
        for topicPartition in partitions { await assign(topicPartition, group: &group) }
        readGroupProgress(of: partitions.compactMap { shards[$0] }, group: &group)
    }

    /// Partitions revoked or lost before their shards started are not started.
    mutating func forgetAwaiting(_ gone: [TopicPartition]) {
        let gone = Set(gone)
        for identifier in awaitingDesiredState.keys {
            awaitingDesiredState[identifier]!.removeAll { gone.contains($0) }
        }
    }

    mutating func assign(_ topicPartition: TopicPartition, group: inout DiscardingTaskGroup) async {
        // During shutdown the consumer's close revokes what it is given.
        guard !shuttingDown, handlers[topicPartition.topic] != nil,
            let messages = consumer.shardMessages(for: topicPartition)
        else { return }
        let flag = flags.setting(for: topicPartition)
        let policy = (configuration.topics[topicPartition.topic] ?? TopicConfiguration()).breaker
        shards[topicPartition] = ShardSupervisor(
            topicPartition: topicPartition, policy: policy, flag: flag, messages: messages, now: clock.now,
            stallAfter: configuration.stallAfter, unstartedAfter: Self.unstartedAfter,
            perPartitionMetrics: configuration.perPartitionMetrics, metricsFactory: metricsFactory)
        // Tripped on whichever host had it before: it stays tripped here (a crash loop does not restart on a
        // new owner); a reset or a flag cycle clears it for the group.
        if let trip = control?.trip(for: topicPartition) {
            let now = clock.now
            shards[topicPartition]?.lastError = trip.reason
            logger.warning(
                "shard assigned tripped: the group's control plane holds it",
                metadata: metadata(
                    topicPartition,
                    ["sluice.reason": "\(trip.reason)", "kafka.offset": "\(trip.offset.map(String.init) ?? "-")"]))
            await transition(topicPartition, group: &group) { $0.assignedTripped(now: now, reason: trip.reason) }
            // Held at a quarantined message on its last owner: released here when the quarantine is.
            if let quarantine = crashContainment?.quarantine(for: topicPartition), quarantine.state == .quarantined {
                shards[topicPartition]?.heldByQuarantine = quarantine.offset
            }
            return
        }
        await transition(topicPartition, group: &group) { $0.assigned() }
    }

    /// What the last owners finished above their commits (commit metadata), read in one round trip beside
    /// the loop; each shard's first pipeline waits for it briefly.
    func readGroupProgress(of assigned: [ShardSupervisor], group: inout DiscardingTaskGroup) {
        guard !assigned.isEmpty else { return }
        let progress = Dictionary(uniqueKeysWithValues: assigned.map { ($0.topicPartition, $0.groupProgress) })
        // Commit metadata is input from outside the process: what it names is bounded by what a host can have
        // done, a hundred times the topic's in-flight limit above the commit, and below the high watermark.
        let maximumDone = Dictionary(
            uniqueKeysWithValues: progress.keys.map {
                ($0, Int64(100 * max(1, (configuration.topics[$0.topic] ?? TopicConfiguration()).maxInFlight)))
            })
        group.addTask { [consumer, logger] in
            var committed: [TopicPartition: TopicPartitionOffset] = [:]
            var highWatermarks: [TopicPartition: Int64] = [:]
            // Started past the group's commit where a dead process got to: its metadata names what it did above.
            let resumed = Dictionary(
                uniqueKeysWithValues: progress.keys.compactMap { topicPartition in
                    consumer.resumedPosition(of: topicPartition).map { (topicPartition, $0) }
                })
            do {
                committed = try await consumer.committedProgress(for: Array(progress.keys), timeout: .seconds(5))
                let withMetadata = Set(
                    committed.filter { $0.value.metadata?.hasPrefix(CommitMetadata.prefix) == true }.map(\.key)
                ).union(resumed.filter { $0.value.metadata != nil }.keys)
                if !withMetadata.isEmpty {
                    highWatermarks =
                        (try? await consumer.queryHighWatermarks(for: Array(withMetadata), timeout: .seconds(5))) ?? [:]
                }
            } catch {
                logger.warning(
                    "could not read what the group finished above its commits; those messages are handled again",
                    metadata: ["error": "\(error)"])
            }
            for (topicPartition, holder) in progress {
                var done: Set<Int64> = []
                for entry in [committed[topicPartition], resumed[topicPartition]].compactMap({ $0 }) {
                    do {
                        let decoded = try CommitMetadata.decode(
                            entry.metadata, committed: entry.offset, highWatermark: highWatermarks[topicPartition],
                            maximumDone: maximumDone[topicPartition] ?? 100_000)
                        done.formUnion(decoded.done)
                        if decoded.pastHighWatermark > 0 {
                            logger.warning(
                                "commit metadata names offsets at or past the high watermark; they are left out",
                                metadata: [
                                    "kafka.partition": "\(topicPartition)",
                                    "sluice.pastHighWatermark": "\(decoded.pastHighWatermark)",
                                    "kafka.highWatermark": "\(highWatermarks[topicPartition].map(String.init) ?? "-")",
                                ])
                        }
                    } catch {
                        logger.warning(
                            "commit metadata refused; the partition is handled from its committed offset (messages it names are handled again)",
                            metadata: ["kafka.partition": "\(topicPartition)", "error": "\(error)"])
                    }
                }
                holder.resolve(done)
            }
        }
    }

    mutating func revoke(_ revocation: KafkaRevocation, group: inout DiscardingTaskGroup) async {
        forgetAwaiting(revocation.partitions)
        nextIdentifier += 1
        let identifier = nextIdentifier
        revocations[identifier] = (revocation, revocation.partitions)
        for topicPartition in revocation.partitions where shards[topicPartition] != nil {
            await transition(topicPartition, group: &group) { $0.stop() }
        }
        let deadline = clock.now + configuration.revokeTimeout
        group.addTask { [input, clock] in
            try? await clock.sleep(until: deadline)
            if !Task.isCancelled { input.yield(.revocationDeadline(identifier)) }
        }
    }

    /// Releases revocations whose shards have all stopped: their offsets are stored, the consumer commits
    /// and releases the partitions.
    mutating func finishRevocations() {
        for (identifier, entry) in revocations {
            let drained = entry.partitions.allSatisfy { shards[$0].map { $0.machine.state == .stopped } ?? true }
            if drained { release(identifier) }
        }
    }

    mutating func forceRevocation(_ identifier: UInt64) {
        guard let entry = revocations[identifier] else { return }
        logger.warning(
            "revoked shards did not drain in time; releasing them",
            metadata: ["kafka.partitions": "\(entry.partitions)"])
        for topicPartition in entry.partitions { shards[topicPartition]?.pipeline?.requestStop() }
        release(identifier)
    }

    mutating func release(_ identifier: UInt64) {
        guard let entry = revocations.removeValue(forKey: identifier) else { return }
        for topicPartition in entry.partitions {
            guard let shard = shards.removeValue(forKey: topicPartition) else { continue }
            shard.destroyMetrics()
            registry.remove(topicPartition)
        }
        entry.revocation.done()
    }

    mutating func lose(_ topicPartition: TopicPartition) {
        guard let shard = shards.removeValue(forKey: topicPartition) else { return }
        // Another member may own it already: nothing of it is stored or committed from here on.
        shard.destroyMetrics()
        registry.remove(topicPartition)
        shard.pipeline?.requestStop()
        publish(topicPartition, ShardEvent.Kind.stopped(.released))
    }
}
