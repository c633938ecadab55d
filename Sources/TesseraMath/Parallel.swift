import CKernels
import Dispatch
import Foundation

/// The one parallel loop of Tessera's numeric code: `forEach` runs iterations on the machine's cores, the calling
/// thread taking part; `forChunks` and `forRanges` split an index range into contiguous chunks on top of it.
///
/// Bodies capture unsafe pointers, which are not `Sendable`; callers guarantee that iterations write disjoint memory
/// and read nothing another iteration writes, which is what makes handing the closure to other threads safe. Every
/// call returns only when all its iterations are done.
public enum Parallel {
    /// Calls `body(i)` for every i in 0..<n, concurrently: on the calling thread and CKernels' spinning workers
    /// (`tessera_parallel_run`: a region starts without waking a sleeping thread), or through libdispatch when those
    /// are busy with another caller's loop or this call is nested inside one.
    public static func forEach(_ n: Int, _ body: (Int) -> Void) {
        if n <= 0 { return }
        if n == 1 { body(0); return }
        withoutActuallyEscaping(body) { escapable in
            var task = escapable
            let ran = withUnsafeMutablePointer(to: &task) { pointer in
                tessera_parallel_run(n, { context, index in
                    guard let context else { return }
                    context.assumingMemoryBound(to: ((Int) -> Void).self).pointee(index)
                }, UnsafeMutableRawPointer(pointer))
            }
            if ran == 0 {
                let sendable = unsafeBitCast(escapable, to: (@Sendable (Int) -> Void).self)
                DispatchQueue.concurrentPerform(iterations: n, execute: sendable)
            }
        }
    }

    // MARK: chunked loops (merge kernels)

    /// Below this many elements a loop runs serially.
    public static let minimumParallelCount = 1 << 16
    /// Chunks per core. More chunks than cores balance the load when another thread shares the cores (the
    /// provenance hash runs beside every merge): with one chunk per core the loop waits for whichever chunk lost its
    /// core, with four it hands the idle core the remaining chunks. Results never depend on the split: every kernel
    /// is elementwise or sums integers.
    public static let chunksPerCore = 4
    /// Chunks never get smaller than this many elements, so that a chunk's work stays well above its dispatch cost.
    public static let minimumChunk = 1 << 15

    /// The number of chunks for a loop over `count` elements.
    public static func chunkCount(_ count: Int, minimum: Int) -> Int {
        count < minimum ? 1 : max(1, min(max(2, cores) * chunksPerCore, count / minimumChunk))
    }

    /// Calls `body(chunkIndex, range)` for every chunk of 0..<count, concurrently when `count` is large.
    public static func forChunks(_ count: Int, minimum: Int = minimumParallelCount, _ body: (Int, Range<Int>) -> Void) {
        let chunks = chunkCount(count, minimum: minimum)
        if chunks == 1 {
            body(0, 0..<count)
            return
        }
        let size = (count + chunks - 1) / chunks
        forEach(chunks) { c in
            let lo = min(count, c * size), hi = min(count, lo + size)
            body(c, lo..<hi)
        }
    }

    /// The chunk ranges `forChunks` would use, for passes that must agree on the split (prefix sums over chunks).
    public static func chunkRanges(_ count: Int, minimum: Int = minimumParallelCount) -> [Range<Int>] {
        let chunks = chunkCount(count, minimum: minimum)
        let size = max(1, (count + chunks - 1) / chunks)
        return (0..<chunks).map { c in min(count, c * size)..<min(count, c * size + size) }
    }

    /// Runs one closure per range, concurrently when there is more than one.
    public static func forRanges(_ ranges: [Range<Int>], _ body: (Int, Range<Int>) -> Void) {
        if ranges.count == 1 { body(0, ranges[0]); return }
        forEach(ranges.count) { c in body(c, ranges[c]) }
    }

    static let cores = ProcessInfo.processInfo.activeProcessorCount
}

/// A buffer that concurrent chunks write to at disjoint indices. Sendable by construction of its callers: each
/// chunk touches only its own range (or its own slot), and the owner reads it only after the parallel loop returns.
@frozen
public struct SharedMutablePointer<T>: @unchecked Sendable {
    public let base: UnsafeMutablePointer<T>
    @inlinable public init(_ base: UnsafeMutablePointer<T>) { self.base = base }
    @inlinable public subscript(i: Int) -> T {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
}

@frozen
public struct SharedMutableRawPointer: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    @inlinable public init(_ base: UnsafeMutableRawPointer) { self.base = base }
}

@frozen
public struct SharedPointer<T>: @unchecked Sendable {
    public let base: UnsafePointer<T>
    @inlinable public init(_ base: UnsafePointer<T>) { self.base = base }
    @inlinable public subscript(i: Int) -> T { base[i] }
}

/// Lets a loop body cross into the parallel loop. The loops hand each chunk a disjoint index range of buffers the
/// caller owns, and return only when every chunk is done, so no data is shared unsafely.
@frozen
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    @inlinable public init(_ value: T) { self.value = value }
}
