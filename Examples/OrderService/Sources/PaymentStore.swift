import CSQLite
import Dispatch
import Sluice
import Synchronization

/// The payments table in SQLite. Delivery is at least once, so a payment is keyed by its partition and
/// offset and a redelivered one is ignored. SQLite calls block, so they run on a serial Dispatch queue,
/// never on Swift's cooperative pool.
final class PaymentStore: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// `sqlite3 *`, used only on `queue`.
    private nonisolated(unsafe) let database: OpaquePointer
    private let queue = DispatchQueue(label: "order-service.sqlite")
    private let stored = Mutex(0)

    init(path: String) throws {
        var handle: OpaquePointer?
        guard
            sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil)
                == SQLITE_OK,
            let handle
        else {
            throw Failure(description: "cannot open SQLite database \(path)")
        }
        database = handle
        try execute(
            """
            PRAGMA journal_mode=WAL;
            PRAGMA busy_timeout=5000;
            CREATE TABLE IF NOT EXISTS payments (
                partition INTEGER NOT NULL, offset INTEGER NOT NULL, key TEXT, payload BLOB NOT NULL,
                PRIMARY KEY (partition, offset));
            """)
    }

    deinit { sqlite3_close(database) }

    /// Payments stored by this process.
    var count: Int { stored.withLock { $0 } }

    func insert(_ batch: [Message]) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            queue.async {
                continuation.resume(with: Result { try self.insertNow(batch) })
            }
        }
    }

    private func insertNow(_ batch: [Message]) throws {
        try execute("BEGIN")
        var statement: OpaquePointer?
        guard
            sqlite3_prepare_v2(database, "INSERT OR IGNORE INTO payments VALUES (?, ?, ?, ?)", -1, &statement, nil)
                == SQLITE_OK
        else {
            // The reason first: the rollback replaces it.
            let reason = String(cString: sqlite3_errmsg(database))
            _ = try? execute("ROLLBACK")
            throw Failure(description: "prepare failed: \(reason)")
        }
        defer { sqlite3_finalize(statement) }
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        for message in batch {
            sqlite3_reset(statement)
            sqlite3_bind_int(statement, 1, message.partition)
            sqlite3_bind_int64(statement, 2, message.offset)
            if let key = message.keyString {
                sqlite3_bind_text(statement, 3, key, -1, transient)
            } else {
                sqlite3_bind_null(statement, 3)
            }
            message.value.withUnsafeBytes { bytes in
                _ = sqlite3_bind_blob(statement, 4, bytes.baseAddress, Int32(bytes.count), transient)
            }
            guard sqlite3_step(statement) == SQLITE_DONE else {
                let reason = String(cString: sqlite3_errmsg(database))
                _ = try? execute("ROLLBACK")
                throw Failure(description: "insert failed: \(reason)")
            }
        }
        try execute("COMMIT")
        stored.withLock { $0 += batch.count }
    }

    private func execute(_ sql: String) throws {
        var error: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(database, sql, nil, nil, &error) == SQLITE_OK else {
            let reason = error.map { String(cString: $0) } ?? "unknown"
            sqlite3_free(error)
            throw Failure(description: "SQLite: \(reason)")
        }
    }
}
