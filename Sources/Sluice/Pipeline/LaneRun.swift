import SluiceKafka

/// Messages of one fetched batch given to one lane: a range of the batch (ordering `partition` and `none`),
/// or the positions of the lane's keys in it (ordering `key`). The lanes share the batch instead of each
/// getting a copy of its messages: a copied message retains its buffer and its fields, and the copies
/// are released again on the lanes' threads.
struct LaneRun: RandomAccessCollection, Sendable {
    private let batch: [Message]
    /// Empty: positions are indices into `batch` itself.
    private let positions: [Int32]
    let startIndex: Int
    let endIndex: Int

    /// `batch[range]`.
    init(_ batch: [Message], range: Range<Int>) {
        self.batch = batch
        self.positions = []
        self.startIndex = range.lowerBound
        self.endIndex = range.upperBound
    }

    /// The messages of `batch` at `positions`, in that order.
    init(_ batch: [Message], positions: [Int32]) {
        self.batch = batch
        self.positions = positions
        self.startIndex = 0
        self.endIndex = positions.count
    }

    /// Messages given as they are (tests, and runs that were filtered).
    init(_ messages: [Message]) {
        self.init(messages, range: messages.indices)
    }

    private init(batch: [Message], positions: [Int32], bounds: Range<Int>) {
        self.batch = batch
        self.positions = positions
        self.startIndex = bounds.lowerBound
        self.endIndex = bounds.upperBound
    }

    subscript(position: Int) -> Message {
        positions.isEmpty ? batch[position] : batch[Int(positions[position])]
    }

    subscript(bounds: Range<Int>) -> LaneRun {
        LaneRun(batch: batch, positions: positions, bounds: bounds)
    }

    /// The messages as an array slice, for the paths that take one (the slow path, batches).
    var slice: ArraySlice<Message> {
        positions.isEmpty ? batch[startIndex..<endIndex] : ArraySlice(self)
    }
}
