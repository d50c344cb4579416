import Logging
import SluiceKafka

/// `output: exactlyOnce`: the pipeline's transaction starts before the first handler call, commits every
/// interval while messages are dispatched, commits what is done at a clean end, and is aborted on a crash.
extension ShardPipeline {
    /// Starts the transaction; a failure is the pipeline's crash (the supervisor restarts it with backoff).
    func startTransaction(_ transaction: ShardTransaction) async -> ShardCrash? {
        do {
            try await transaction.start()
            return nil
        } catch {
            logger.error("the shard's transaction could not start", metadata: ["kafka.error": "\(error)"])
            await transaction.abort()
            return ShardCrash(reason: .transactionFailed("starting: \(error)"), offset: restartOffset ?? 0)
        }
    }

    /// Commits every interval until the dispatch ends (cancelled) or a commit fails (the pipeline crashes: what
    /// is not committed is handled again).
    func commitTransactions(_ transaction: ShardTransaction) async {
        while !Task.isCancelled {
            do {
                try await clock.sleep(until: clock.now + transaction.interval)
            } catch {
                return
            }
            if crashed.load(ordering: .acquiring) { return }
            do {
                try await transaction.commit(upTo: watermark)
            } catch {
                let offset = transaction.committedOffset ?? restartOffset ?? 0
                logger.error(
                    "the shard's transaction failed; aborting it", metadata: ["kafka.error": "\(error)"])
                crash(ShardCrash(reason: .transactionFailed("\(error)"), offset: offset))
                return
            }
        }
    }

    /// After the drain: commits what is done unless the pipeline crashed, then closes the producer; aborts when
    /// it crashed or the last commit failed (returned as the crash).
    func endTransaction(_ transaction: ShardTransaction, crashed: Bool) async -> ShardCrash? {
        guard !crashed else {
            await transaction.abort()
            return nil
        }
        do {
            try await transaction.commit(upTo: watermark)
            await transaction.close()
            return nil
        } catch {
            logger.error("the shard's last transaction failed; aborting it", metadata: ["kafka.error": "\(error)"])
            await transaction.abort()
            return ShardCrash(
                reason: .transactionFailed("\(error)"), offset: transaction.committedOffset ?? restartOffset ?? 0)
        }
    }
}
