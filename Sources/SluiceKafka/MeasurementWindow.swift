/// What a benchmark measures between two moments of a consumer's run: the first message read and the last one
/// it waits for (joining the group before and shutting down after are not per-message costs). Each closure is
/// called once, from whichever thread reaches the moment.
public struct MeasurementWindow: Sendable {
    /// The first message has arrived.
    public var opened: @Sendable () -> Void
    /// The last message has been read or handled.
    public var closed: @Sendable () -> Void

    public init(opened: @escaping @Sendable () -> Void, closed: @escaping @Sendable () -> Void) {
        self.opened = opened
        self.closed = closed
    }

    /// Nothing is told.
    public static let none = MeasurementWindow(opened: {}, closed: {})
}
