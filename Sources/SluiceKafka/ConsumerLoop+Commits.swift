import Crdkafka
import Logging

/// Commits: the callers', the periodic one, a revocation's and the close's, over the ``CommitLedger``.
extension ConsumerLoop {
    // MARK: Commits

    /// Starts one commit for every waiting caller, unless a callers' commit is out (its completion starts the next).
    func startCallersCommitIfIdle() {
        guard let waiting = commits.takeWaitingCallers() else { return }
        startCommit(.callers(waiting), timeout: .seconds(30))
    }

    @discardableResult
    func startCommit(_ purpose: CommitLedger<CheckedContinuation<Void, any Error>>.Purpose, timeout: Duration) -> UInt64
    {
        let identifier = commits.started(purpose, now: .now, timeout: timeout)
        // An explicit list of what was stored for assigned partitions, with its metadata (librdkafka before
        // 2.2 drops the metadata of stored offsets); none stored: librdkafka's own (nothing to commit).
        let progress = shared.storedProgress.withLock { progress in
            progress.values.filter { partitions[$0.topicPartition] != nil }.sorted {
                $0.topicPartition < $1.topicPartition
            }
        }
        let offsets = progress.isEmpty ? nil : TopicPartitionList.make(progress)
        defer { if let offsets { rd_kafka_topic_partition_list_destroy(offsets) } }
        let result = rd_kafka_commit_queue(
            rk, offsets, consumerQueue, nil, UnsafeMutableRawPointer(bitPattern: UInt(identifier)))
        if case .callers = purpose { shared.callerCommitsSent.add(1, ordering: .relaxed) }
        if result != RD_KAFKA_RESP_ERR_NO_ERROR {
            completeCommit(identifier, error: result)
        }
        return identifier
    }

    func handleCommitResult(_ event: OpaquePointer) {
        let identifier = UInt64(UInt(bitPattern: rd_kafka_event_opaque(event)))
        var error = rd_kafka_event_error(event)
        if error == RD_KAFKA_RESP_ERR_NO_ERROR, let list = rd_kafka_event_topic_partition_list(event),
            let (_, partitionError) = TopicPartitionList.firstError(list)
        {
            error = partitionError
        }
        completeCommit(identifier, error: error)
    }

    func completeCommit(_ identifier: UInt64, error: rd_kafka_resp_err_t) {
        // Nothing stored to commit is success.
        let failure: KafkaError? =
            (error == RD_KAFKA_RESP_ERR_NO_ERROR || error == RD_KAFKA_RESP_ERR__NO_OFFSET)
            ? nil : KafkaError.rdkafka(error, context: "committing offsets")
        guard let completion = commits.completed(identifier, failed: failure != nil, now: .now) else { return }
        if let failure {
            shared.commitFailures.add(1, ordering: .relaxed)
            if failure.isRebalanceSignal { rebalanceGate.rebalanceSeen(now: .now) }
        }
        switch completion {
        case .callers(let continuations):
            for continuation in continuations {
                if let failure { continuation.resume(throwing: failure) } else { continuation.resume() }
            }
            startCallersCommitIfIdle()
        case .periodic(let retryIn):
            if let failure, let backoff = retryIn {
                // What was stored is still to be committed.
                shared.offsetsStored.store(true, ordering: .relaxed)
                if failure.isRebalanceSignal {
                    logger.debug(
                        "periodic commit refused while the group rebalances; held until it ends",
                        metadata: ["kafka.error": "\(failure.message)"])
                } else {
                    logger.warning(
                        "periodic commit failed; retrying",
                        metadata: [
                            "kafka.error": "\(failure.message)", "sluice.retryIn": "\(backoff)",
                            "sluice.failures": "\(commits.periodicFailures)",
                        ])
                }
            }
        case .revocation(let revocationID):
            if let failure {
                logger.warning(
                    "commit before releasing revoked partitions failed", metadata: ["kafka.error": "\(failure.message)"]
                )
            }
            if let revocation = revocations.removeValue(forKey: revocationID) {
                release(revocation.partitions)
            }
        case .close:
            if let failure {
                logger.warning("final commit failed", metadata: ["kafka.error": "\(failure.message)"])
            }
            if close.finalCommitCompleted() { beginClose() }
        }
    }

    /// Whether a periodic commit may start when it is due: while running, not during a rebalance, and not
    /// while the last one is still out.
    func mayCommitPeriodically(now: ContinuousClock.Instant) -> Bool {
        guard close.isRunning else { return false }
        return !rebalanceGate.isHolding(now: now) && !commits.periodicOut
    }
}
