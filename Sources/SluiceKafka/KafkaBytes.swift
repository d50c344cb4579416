/// The bytes of a consumed message's key or value: a read-only view into the buffer the consumer copied
/// the message's whole batch into. A fetched batch costs one allocation and one copy out of librdkafka,
/// not two allocations per message.
///
/// It is a `RandomAccessCollection` of `UInt8`, so the usual conversions work:
/// `String(decoding: message.value, as: UTF8.self)`, `Array(message.value)`, `Data(message.value)`, and
/// ``withUnsafeBytes(_:)`` for zero-copy parsing.
///
/// Keeping a `KafkaBytes` keeps its batch's buffer alive (at most
/// ``KafkaConsumerConfiguration/maxBatchSize`` messages' bytes). To keep one message's bytes for long
/// while the rest of its batch goes, copy them: `Array(message.value)`.
public struct KafkaBytes: RandomAccessCollection, Sendable, Hashable, ExpressibleByArrayLiteral, CustomStringConvertible
{
    /// An immutable byte buffer shared by the views into it. `@unchecked Sendable`: written once, before
    /// any view exists, and only read afterwards.
    final class Storage: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        let capacity: Int

        init(capacity: Int) {
            self.capacity = capacity
            self.base = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(capacity, 1), alignment: 1)
        }

        deinit { base.deallocate() }

        static let empty = Storage(capacity: 0)
    }

    let storage: Storage
    let start: UInt32
    /// The number of bytes.
    public let count: Int

    init(storage: Storage, start: Int, count: Int) {
        self.storage = storage
        self.start = UInt32(start)
        self.count = count
    }

    /// Copies `bytes` into a buffer of its own.
    public init(_ bytes: some Sequence<UInt8>) {
        let array = Array(bytes)
        guard !array.isEmpty else {
            self.init(storage: .empty, start: 0, count: 0)
            return
        }
        let storage = Storage(capacity: array.count)
        array.withUnsafeBytes { storage.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        self.init(storage: storage, start: 0, count: array.count)
    }

    /// Copies UTF-8 text.
    public init(_ text: String) { self.init(Array(text.utf8)) }

    public init(arrayLiteral elements: UInt8...) { self.init(elements) }

    /// No bytes.
    public init() { self.init(storage: .empty, start: 0, count: 0) }

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }

    public subscript(position: Int) -> UInt8 {
        precondition(position >= 0 && position < count, "KafkaBytes index \(position) out of range 0..<\(count)")
        return storage.base.load(fromByteOffset: Int(start) + position, as: UInt8.self)
    }

    /// Calls `body` with the bytes in place; the pointer is valid only during the call.
    public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(start: storage.base + Int(start), count: count))
    }

    public func withContiguousStorageIfAvailable<Result>(
        _ body: (UnsafeBufferPointer<UInt8>) throws -> Result
    ) rethrows -> Result? {
        try withUnsafeBytes { raw in try body(raw.bindMemory(to: UInt8.self)) }
    }

    public static func == (lhs: KafkaBytes, rhs: KafkaBytes) -> Bool {
        guard lhs.count == rhs.count else { return false }
        if lhs.storage === rhs.storage, lhs.start == rhs.start { return true }
        return lhs.withUnsafeBytes { left in rhs.withUnsafeBytes { right in left.elementsEqual(right) } }
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    /// The bytes as UTF-8 text (invalid sequences are repaired), as the description.
    public var description: String { String(decoding: self, as: UTF8.self) }
}

extension KafkaBytes {
    /// Copies the bytes of librdkafka messages into one buffer: ``add(_:count:)`` reserves each message's
    /// bytes in a first pass, ``finish()`` allocates, and ``view(_:count:)`` copies and hands out the views
    /// in a second pass, in the same order.
    struct BatchWriter {
        private var total = 0
        private var storage: Storage?
        private var written = 0

        /// Reserves room for `count` bytes.
        mutating func reserve(_ count: Int) { total += count }

        /// Allocates the buffer for what was reserved.
        mutating func allocate() {
            precondition(total <= Int(UInt32.max), "a batch of \(total) bytes exceeds KafkaBytes' 4 GiB limit")
            storage = total == 0 ? .empty : Storage(capacity: total)
        }

        /// Copies `count` bytes from `source` into the buffer and returns their view.
        mutating func copy(_ source: UnsafeRawPointer, count: Int) -> KafkaBytes {
            guard count > 0, let storage else { return KafkaBytes() }
            precondition(written + count <= storage.capacity, "KafkaBytes.BatchWriter: more copied than reserved")
            (storage.base + written).copyMemory(from: source, byteCount: count)
            defer { written += count }
            return KafkaBytes(storage: storage, start: written, count: count)
        }
    }
}
