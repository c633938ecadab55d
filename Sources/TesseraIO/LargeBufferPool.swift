import Foundation

/// Whole-tensor buffers handed back for reuse by a pipeline that decodes many tensors of a few sizes (a checkout:
/// a transformer's layers repeat the same shapes).
///
/// A fresh `LargeBuffer` is a fresh mapping: the kernel faults in and zeroes every page on first write, and unmaps
/// them on release. A buffer taken from the pool has its pages already: a delta-encoded GPT-2-small checkout's
/// system time went from 1.2-1.6 s to about 1.0 s here. Buffers are matched by exact size; the pool keeps at most `limit` bytes of free buffers (the oldest go
/// first), so it adds at most that to a pipeline's memory bound.
///
/// A reused buffer holds what it held before: callers must overwrite it whole before reading it (an object decode
/// that stops short throws, and its buffer is not used).
public final class LargeBufferPool: @unchecked Sendable {
    // @unchecked: `free` and `freeBytes` are guarded by `lock`.
    private let lock = NSLock()
    private var free: [LargeBuffer] = []
    private var freeBytes = 0
    public let limit: Int

    public init(limit: Int) { self.limit = max(0, limit) }

    /// A buffer of exactly `count` bytes: one given back earlier when there is one, else a new one.
    ///
    /// A buffer larger than the limit (a model's embedding matrix) empties the pool first: a pipeline's memory peaks
    /// on its largest values, and the small free buffers would only add to that peak (a dense fine-tune's `git add`
    /// went 18 MB over bench_git's bound of twice the largest tensor + 64 MB with them).
    public func take(count: Int) throws -> LargeBuffer {
        var dropped: [LargeBuffer] = []
        lock.lock()
        if let k = free.lastIndex(where: { $0.count == count }) {
            let buffer = free.remove(at: k)
            freeBytes -= buffer.count
            lock.unlock()
            return buffer
        }
        if count > limit {
            dropped = free
            free = []
            freeBytes = 0
        }
        lock.unlock()
        dropped.removeAll()  // unmapped here, outside the lock, before the new buffer is mapped
        return try LargeBuffer(count: count)
    }

    /// Keeps `buffer` for a later `take`, dropping the oldest free buffers beyond the limit. The caller must not use
    /// it afterwards.
    public func give(_ buffer: LargeBuffer) {
        guard buffer.count > 0, buffer.count <= limit, !buffer.isBorrowed else { return }
        lock.lock()
        free.append(buffer)
        freeBytes += buffer.count
        var dropped: [LargeBuffer] = []
        while freeBytes > limit, !free.isEmpty {
            let oldest = free.removeFirst()
            freeBytes -= oldest.count
            dropped.append(oldest)
        }
        lock.unlock()
        _ = dropped  // unmapped here, outside the lock
    }

    /// Bytes held in free buffers (for tests).
    public var heldBytes: Int { lock.lock(); defer { lock.unlock() }; return freeBytes }
}
