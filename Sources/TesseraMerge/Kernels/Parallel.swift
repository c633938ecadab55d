import Dispatch

/// Splits `0..<count` into contiguous chunks and runs them on the machine's cores.
///
/// Merge kernels are memory-bound loops over one tensor; two threads pay only when a tensor is large enough that the
/// split costs less than the work, so small tensors run on the calling thread.
enum Parallel {
    /// Below this many elements a loop runs serially.
    static let minimumParallelCount = 1 << 16
    /// Chunks per core. More chunks than cores balance the load when another thread shares the cores (the
    /// provenance hash runs beside every merge): with one chunk per core the loop waits for whichever chunk lost its
    /// core, with four it hands the idle core the remaining chunks. Results never depend on the split: every kernel
    /// is elementwise or sums integers.
    static let chunksPerCore = 4
    /// Chunks never get smaller than this many elements, so that a chunk's work stays well above its dispatch cost.
    static let minimumChunk = 1 << 15

    /// The number of chunks for a loop over `count` elements.
    static func chunkCount(_ count: Int, minimum: Int) -> Int {
        count < minimum ? 1 : max(1, min(max(2, ProcessInfoCores.count) * chunksPerCore, count / minimumChunk))
    }

    /// Calls `body(chunkIndex, range)` for every chunk, concurrently when `count` is large.
    static func forChunks(_ count: Int, minimum: Int = minimumParallelCount, _ body: (Int, Range<Int>) -> Void) {
        let chunks = chunkCount(count, minimum: minimum)
        if chunks == 1 {
            body(0, 0..<count)
            return
        }
        let size = (count + chunks - 1) / chunks
        withoutActuallyEscaping(body) { escapable in
            let work = UncheckedSendable(escapable)
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                let lo = min(count, c * size), hi = min(count, lo + size)
                work.value(c, lo..<hi)
            }
        }
    }

    /// The chunk ranges `forChunks` would use, for passes that must agree on the split (prefix sums over chunks).
    static func chunkRanges(_ count: Int, minimum: Int = minimumParallelCount) -> [Range<Int>] {
        let chunks = chunkCount(count, minimum: minimum)
        let size = max(1, (count + chunks - 1) / chunks)
        return (0..<chunks).map { c in min(count, c * size)..<min(count, c * size + size) }
    }

    /// Runs one closure per range, concurrently when there is more than one.
    static func forRanges(_ ranges: [Range<Int>], _ body: (Int, Range<Int>) -> Void) {
        if ranges.count == 1 { body(0, ranges[0]); return }
        withoutActuallyEscaping(body) { escapable in
            let work = UncheckedSendable(escapable)
            DispatchQueue.concurrentPerform(iterations: ranges.count) { c in work.value(c, ranges[c]) }
        }
    }
}

import Foundation

enum ProcessInfoCores {
    static let count = ProcessInfo.processInfo.activeProcessorCount
}

/// A buffer that concurrent chunks write to at disjoint indices. Sendable by construction of its callers: each
/// chunk touches only its own range (or its own slot), and the owner reads it only after the parallel loop returns.
struct SharedMutablePointer<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
    init(_ base: UnsafeMutablePointer<T>) { self.base = base }
    subscript(i: Int) -> T {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
}

struct SharedMutableRawPointer: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    init(_ base: UnsafeMutableRawPointer) { self.base = base }
}

struct SharedPointer<T>: @unchecked Sendable {
    let base: UnsafePointer<T>
    init(_ base: UnsafePointer<T>) { self.base = base }
    subscript(i: Int) -> T { base[i] }
}

/// Lets a loop body cross into `concurrentPerform`. The parallel loops here hand each chunk a disjoint index range
/// of buffers the caller owns, and return only when every chunk is done, so no data is shared unsafely.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
