import Foundation

/// The bytes in flight between the stages of a pipeline (a file's tensors being read while earlier ones are
/// compressed, objects decoded ahead of the writer), bounded: a stage reserves what it is about to hold and the stage
/// that frees it releases it. Memory then stays within the limit plus one item, whatever the input's size.
///
/// An item larger than the limit is let through alone, when nothing else is in flight. `stop` (on an error or a
/// cancellation) wakes every waiter and makes `reserve` return false at once. Every `reserve` is counted, stopped or
/// not, so that each is matched by one `release` whatever happened.
public final class ByteBudget: @unchecked Sendable {
    // @unchecked: all state is guarded by `condition`.
    private let condition = NSCondition()
    private var held = 0
    private var stopped = false
    private var _limit: Int

    public init(limit: Int) { _limit = max(limit, 1) }

    /// Settable while nothing is in flight (a pipeline learns its largest item once it has read a header).
    public var limit: Int {
        get { condition.lock(); defer { condition.unlock() }; return _limit }
        set { condition.lock(); _limit = max(newValue, 1); condition.broadcast(); condition.unlock() }
    }

    public var inFlight: Int { condition.lock(); defer { condition.unlock() }; return held }
    public var isStopped: Bool { condition.lock(); defer { condition.unlock() }; return stopped }

    /// Waits until `bytes` more fit, and counts them; returns false (without waiting) once the budget is stopped.
    @discardableResult
    public func reserve(_ bytes: Int) -> Bool {
        precondition(bytes >= 0)
        condition.lock()
        defer { condition.unlock() }
        while held > 0 && held + bytes > _limit && !stopped { condition.wait() }
        held += bytes
        return !stopped
    }

    public func release(_ bytes: Int) {
        condition.lock()
        held -= bytes
        precondition(held >= 0, "released more than was reserved")
        condition.broadcast()
        condition.unlock()
    }

    /// Ends the pipeline: waiters wake and every later `reserve` returns false.
    public func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }
}
