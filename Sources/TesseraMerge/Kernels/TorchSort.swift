import Foundation
import TesseraMath

/// The order torch's CPU sort gives equal magnitudes, so that magnitude trimming keeps the same entries as mergekit.
///
/// mergekit picks the entries a sparsifier keeps with `torch.argsort(|τ|, descending=True)[:k]` (TIES) and
/// `torch.sort(|τ|).indices[n_bot : n_bot + k]` (breadcrumbs). Neither sort is stable: torch's CPU kernel runs
/// libstdc++'s `std::sort` (introsort: median-of-three quicksort, heapsort past depth 2·⌊log₂ n⌋, a final insertion
/// sort over runs of 16) on (value, index) pairs, so which of several equal magnitudes fall inside the cut depends on
/// the whole tensor. In float32 such ties are rare; in float16 and bfloat16 they are the rule (a tensor has only a few
/// thousand distinct magnitudes), and a "lower index first" rule then picks other entries than mergekit in a few
/// percent of the tensor. This file replays that algorithm step for step (checked against torch 2.13's argsort on
/// tensors with and without ties, ascending and descending), but only when it matters: when the elements tied at a
/// cut all fall on the same side of it, the kept set is unique and the O(n) radix select decides it alone.
///
/// Public so that the tests can check the replay against torch's own orders.
public enum TorchSort {
    struct Pair {
        var key: Float
        var index: UInt32
    }

    /// Indices of `keys` in the order torch's `sort(keys, descending:)` returns them (non-stable CPU sort).
    public static func order(_ keys: UnsafeBufferPointer<Float>, descending: Bool) -> [UInt32] {
        let n = keys.count
        let pairs = UnsafeMutablePointer<Pair>.allocate(capacity: max(n, 1))
        defer { pairs.deallocate() }
        // A descending sort compares a > b, which for the non-NaN magnitudes sorted here is −a < −b: one ascending
        // routine serves both.
        for i in 0..<n { pairs[i] = Pair(key: descending ? -keys[i] : keys[i], index: UInt32(truncatingIfNeeded: i)) }
        sort(pairs, n)
        return (0..<n).map { pairs[$0].index }
    }

    /// libstdc++'s `std::sort(first, first + n, less)`.
    static func sort(_ a: UnsafeMutablePointer<Pair>, _ n: Int) {
        guard n > 1 else { return }
        var lg = 0
        while (1 << (lg + 1)) <= n { lg += 1 }
        introsortLoop(a, 0, n, depth: 2 * lg)
        if n > threshold {
            insertionSort(a, 0, threshold)
            for i in threshold..<n { linearInsert(a, i) }
        } else {
            insertionSort(a, 0, n)
        }
    }

    static let threshold = 16

    @inline(__always) static func less(_ x: Pair, _ y: Pair) -> Bool { x.key < y.key }

    static func introsortLoop(_ a: UnsafeMutablePointer<Pair>, _ first: Int, _ last0: Int, depth depth0: Int) {
        var last = last0, depth = depth0
        while last - first > threshold {
            if depth == 0 {
                heapSort(a, first, last)
                return
            }
            depth -= 1
            let mid = first + (last - first) / 2
            moveMedianToFirst(a, first, first + 1, mid, last - 1)
            let cut = unguardedPartition(a, first + 1, last, pivot: first)
            introsortLoop(a, cut, last, depth: depth)
            last = cut
        }
    }

    @inline(__always) static func swapAt(_ a: UnsafeMutablePointer<Pair>, _ i: Int, _ j: Int) {
        let t = a[i]; a[i] = a[j]; a[j] = t
    }

    static func moveMedianToFirst(_ a: UnsafeMutablePointer<Pair>, _ result: Int, _ x: Int, _ y: Int, _ z: Int) {
        if less(a[x], a[y]) {
            if less(a[y], a[z]) { swapAt(a, result, y) } else if less(a[x], a[z]) { swapAt(a, result, z) } else { swapAt(a, result, x) }
        } else if less(a[x], a[z]) {
            swapAt(a, result, x)
        } else if less(a[y], a[z]) {
            swapAt(a, result, z)
        } else {
            swapAt(a, result, y)
        }
    }

    /// Elements per block of the block partition (its loops are written out for 128).
    static let block = 128

    /// For each 8-bit mask, the positions of its set bits in ascending order, one per byte (the rest zero).
    static let offsetTable: [UInt64] = (0..<256).map { mask in
        var packed: UInt64 = 0, count: UInt64 = 0
        for bit in 0..<8 where mask & (1 << bit) != 0 {
            packed |= UInt64(bit) << (8 * count)
            count += 1
        }
        return packed
    }

    /// libstdc++'s `__unguarded_partition`: Hoare's scheme, which swaps the k-th element from the left that is not
    /// less than the pivot with the k-th from the right that the pivot is not less than, for k = 1, 2, … until the two
    /// cross. On a long range the pairs are found a block at a time without branches (BlockQuicksort's scheme), which
    /// swaps exactly the same pairs in the same order (every left block lies before every right block, so each pair
    /// is swapped by Hoare's loop too); the scalar loop then resumes after the last pair swapped, where Hoare's loop
    /// would be, and finds the crossing. The result is the scalar loop's, element for element.
    static func unguardedPartition(_ a: UnsafeMutablePointer<Pair>, _ first0: Int, _ last0: Int, pivot: Int) -> Int {
        var first = first0, last = last0
        let p = a[pivot]
        if last0 - first0 >= 4 * block {
            let pk = p.key
            let pivots = SIMD8<Float>(repeating: pk)
            let leftWeights = SIMD8<UInt32>(1, 2, 4, 8, 16, 32, 64, 128), rightWeights = SIMD8<UInt32>(128, 64, 32, 16, 8, 4, 2, 1)
            // Offsets are written eight bytes at a time, up to seven past the last kept one.
            let offsets = UnsafeMutablePointer<UInt8>.allocate(capacity: 2 * (block + 8))
            defer { offsets.deallocate() }
            let offL = offsets, offR = offsets + block + 8
            var lb = first0, rb = last0
            var numL = 0, startL = 0, numR = 0, startR = 0
            var lastL = -1, lastR = -1
            while rb - lb >= 2 * block {
                if numL == 0 {
                    startL = 0
                    let base = UnsafeRawPointer(a + lb)
                    var i = 0
                    while i < 128 {
                        // Eight pairs at a time: the keys not less than the pivot, as a bit mask, and their offsets
                        // from a table (written whole; only the first popcount of them are kept).
                        let keys = base.loadUnaligned(fromByteOffset: i &* 8, as: SIMD16<Float>.self).evenHalf
                        let bits = Int(SIMD8<UInt32>(repeating: 0).replacing(with: leftWeights, where: .!(keys .< pivots)).wrappedSum())
                        UnsafeMutableRawPointer(offL + numL).storeBytes(of: offsetTable[bits] &+ UInt64(i) &* 0x0101_0101_0101_0101, as: UInt64.self)
                        numL &+= bits.nonzeroBitCount
                        i &+= 8
                    }
                }
                if numR == 0 {
                    startR = 0
                    let top = UnsafeRawPointer(a + (rb &- 128))  // the block's elements, read from its end
                    var i = 0
                    while i < 128 {
                        // Lane l holds the element at offset i + 7 − l from the end: its bit is 7 − l.
                        let keys = top.loadUnaligned(fromByteOffset: (120 &- i) &* 8, as: SIMD16<Float>.self).evenHalf
                        let bits = Int(SIMD8<UInt32>(repeating: 0).replacing(with: rightWeights, where: .!(pivots .< keys)).wrappedSum())
                        UnsafeMutableRawPointer(offR + numR).storeBytes(of: offsetTable[bits] &+ UInt64(i) &* 0x0101_0101_0101_0101, as: UInt64.self)
                        numR &+= bits.nonzeroBitCount
                        i &+= 8
                    }
                }
                let num = min(numL, numR)
                if num > 0 {
                    let left = a + lb, right = a + (rb &- 1)
                    var j = 0
                    while j < num {
                        let l = left + Int(offL[startL &+ j]), r = right - Int(offR[startR &+ j])
                        let t = l.pointee; l.pointee = r.pointee; r.pointee = t
                        j &+= 1
                    }
                    lastL = lb + Int(offL[startL + num - 1])
                    lastR = rb - 1 - Int(offR[startR + num - 1])
                }
                numL -= num; numR -= num; startL += num; startR += num
                if numL == 0 { lb += block }
                if numR == 0 { rb -= block }
            }
            if lastL >= 0 {
                first = lastL + 1
                last = lastR
            }
        }
        while true {
            while less(a[first], p) { first += 1 }
            last -= 1
            while less(p, a[last]) { last -= 1 }
            if !(first < last) { return first }
            swapAt(a, first, last)
            first += 1
        }
    }

    static func linearInsert(_ a: UnsafeMutablePointer<Pair>, _ i: Int) {
        let value = a[i]
        var j = i - 1
        while less(value, a[j]) { a[j + 1] = a[j]; j -= 1 }
        a[j + 1] = value
    }

    static func insertionSort(_ a: UnsafeMutablePointer<Pair>, _ first: Int, _ last: Int) {
        guard last - first > 1 else { return }
        for i in (first + 1)..<last {
            if less(a[i], a[first]) {
                let value = a[i]
                var j = i
                while j > first { a[j] = a[j - 1]; j -= 1 }
                a[first] = value
            } else {
                linearInsert(a, i)
            }
        }
    }

    /// `std::__adjust_heap` followed by its `__push_heap` (a max-heap under `less`).
    static func adjustHeap(_ a: UnsafeMutablePointer<Pair>, _ first: Int, _ hole0: Int, _ length: Int, _ value: Pair) {
        let top = hole0
        var hole = hole0, child = hole0
        while child < (length - 1) / 2 {
            child = 2 * (child + 1)
            if less(a[first + child], a[first + child - 1]) { child -= 1 }
            a[first + hole] = a[first + child]
            hole = child
        }
        if length & 1 == 0 && child == (length - 2) / 2 {
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        }
        var parent = (hole - 1) / 2
        while hole > top && less(a[first + parent], value) {
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) / 2
        }
        a[first + hole] = value
    }

    /// `std::__partial_sort(first, last, last)`: make_heap, then pop every element.
    static func heapSort(_ a: UnsafeMutablePointer<Pair>, _ first: Int, _ last: Int) {
        let n = last - first
        if n >= 2 {
            var parent = (n - 2) / 2
            while true {
                adjustHeap(a, first, parent, n, a[first + parent])
                if parent == 0 { break }
                parent -= 1
            }
        }
        var end = last
        while end - first > 1 {
            end -= 1
            let value = a[end]
            a[end] = a[first]
            adjustHeap(a, first, 0, end - first, value)
        }
    }

    // MARK: Magnitude trimming in torch's order

    /// Keeps the `k` largest-magnitude entries as mergekit's `magnitude` sparsifier picks them
    /// (`argsort(|x|, descending=True)[:k]`) and zeroes the rest, in place. `k` in 1...count.
    public static func keepTopK(_ x: UnsafeMutableBufferPointer<Float>, k: Int) {
        let n = x.count
        if k >= n { return }
        let t = MagnitudeSelect.threshold(UnsafeBufferPointer(x), rank: k - 1, descending: true)
        if t.before + t.ties == k {
            // Every element tied at the threshold is kept: the set is unique, whatever the sort does with ties, and
            // one branch-free pass keeps it.
            let v = t.value
            let p = SharedMutablePointer(x.baseAddress!)
            Parallel.forChunks(n) { _, r in
                for i in r { p[i] = MagnitudeSelect.key(p[i]) >= v ? p[i] : 0 }
            }
            return
        }
        keepRanks(x, lower: 0, upper: k, descending: true, tie: t)
    }

    /// Keeps ranks `lower..<upper` of the ascending magnitude order as mergekit's `magnitude_outliers` (breadcrumbs)
    /// picks them (`sort(|x|).indices[lower:upper]`) and zeroes the rest, in place; returns the number kept.
    @discardableResult
    public static func keepAscendingRanks(_ x: UnsafeMutableBufferPointer<Float>, lower: Int, upper: Int) -> Int {
        let n = x.count
        let lo = max(0, min(lower, n)), hi = max(lo, min(upper, n))
        // A cut at rank r splits ties only when elements of rank r's magnitude also sit below r.
        func splitsTies(_ r: Int) -> Bool {
            guard r > 0 && r < n else { return false }
            return MagnitudeSelect.threshold(UnsafeBufferPointer(x), rank: r, descending: false).before < r
        }
        if lo == hi || !(splitsTies(lo) || splitsTies(hi)) {
            return MagnitudeSelect.keepAscendingRanks(x, lower: lo, upper: hi)
        }
        keepRanks(x, lower: lo, upper: hi, descending: false)
        return hi - lo
    }

    /// The replay: the elements torch's sort puts at ranks lower..<upper are kept.
    ///
    /// Only which elements land on each side of the two cuts matters, so the replay follows introsort only into the
    /// ranges that contain a cut (a selection, O(n) expected, instead of a sort): introsort partitions so that no
    /// element of a range is strictly less than one of an earlier range, and its final insertion sort moves an element
    /// only past strictly greater ones, so it never carries one across a partition boundary. A range on one side of
    /// both cuts is left as it is; a leaf of at most 16 that holds a cut gets the final insertion sort (stable, as
    /// libstdc++'s is); a range that reaches the depth limit is heap-sorted whole, as torch does.
    /// `tie`: for a top-k (lower 0, descending), the radix select's threshold at rank k − 1.
    static func keepRanks(_ x: UnsafeMutableBufferPointer<Float>, lower: Int, upper: Int, descending: Bool,
                          tie: MagnitudeSelect.Threshold? = nil) {
        let n = x.count
        let (pairs, capacity) = PairScratch.take(max(n, 1))
        defer { PairScratch.give(pairs, capacity: capacity) }
        let out = SharedMutablePointer(pairs), values = SharedMutablePointer(x.baseAddress!)
        var lg = 0
        while (1 << (lg + 1)) <= n { lg += 1 }
        if let tie, lower == 0 && descending && upper < n {
            // A top-k: every magnitude above the one tied at the cut is kept and every one below it dropped, in the
            // pass that builds the pairs (from the values before they are dropped), instead of scattered writes for
            // most of the tensor; of the tied ones, the before + ties − k that torch puts at ranks ≥ k are dropped.
            let v = tie.value, tieKey = -Float(bitPattern: v)
            Parallel.forChunks(n) { _, r in
                for i in r {
                    let value = values[i]
                    out[i] = Pair(key: -abs(value), index: UInt32(truncatingIfNeeded: i))
                    values[i] = MagnitudeSelect.key(value) >= v ? value : 0
                }
            }
            select(pairs, 0, n, depth: 2 * lg, cuts: [lower, upper])
            var surplus = tie.before + tie.ties - upper
            var r = upper
            while surplus > 0 && r < n {
                if pairs[r].key == tieKey { x[Int(pairs[r].index)] = 0; surplus -= 1 }
                r += 1
            }
            return
        }
        Parallel.forChunks(n) { _, r in
            for i in r { out[i] = Pair(key: descending ? -abs(values[i]) : abs(values[i]), index: UInt32(truncatingIfNeeded: i)) }
        }
        select(pairs, 0, n, depth: 2 * lg, cuts: [lower, upper])
        for r in 0..<lower { x[Int(pairs[r].index)] = 0 }
        for r in upper..<n { x[Int(pairs[r].index)] = 0 }
    }

    /// `introsortLoop` restricted to the ranges holding a cut (a cut c separates ranks c − 1 and c).
    static func select(_ a: UnsafeMutablePointer<Pair>, _ first: Int, _ last0: Int, depth depth0: Int, cuts: [Int]) {
        var last = last0, depth = depth0
        func holdsCut(_ lo: Int, _ hi: Int) -> Bool { cuts.contains { $0 > lo && $0 < hi } }
        while last - first > threshold {
            if !holdsCut(first, last) { return }
            if depth == 0 {
                heapSort(a, first, last)
                return
            }
            depth -= 1
            let mid = first + (last - first) / 2
            moveMedianToFirst(a, first, first + 1, mid, last - 1)
            let cut = unguardedPartition(a, first + 1, last, pivot: first)
            select(a, cut, last, depth: depth, cuts: cuts)
            last = cut
        }
        if holdsCut(first, last) { insertionSort(a, first, last) }
    }
}

/// The replay's (value, index) buffers, kept for the next tensor: a merge trims tensor after tensor, two models at a
/// time, and a fresh buffer of 8 bytes per entry costs the kernel a zeroed page every 4 KiB (as much time as the
/// partitions, on a 124M-parameter model). At most two buffers of at most 2^23 pairs (64 MiB) are kept.
enum PairScratch {
    nonisolated(unsafe) private static var free: [(pointer: UnsafeMutablePointer<TorchSort.Pair>, capacity: Int)] = []
    private static let lock = NSLock()
    static let largestKept = 1 << 23

    /// A buffer of at least `count` pairs, and its capacity.
    static func take(_ count: Int) -> (UnsafeMutablePointer<TorchSort.Pair>, Int) {
        lock.lock()
        defer { lock.unlock() }
        if let i = free.firstIndex(where: { $0.capacity >= count }) {
            let kept = free.remove(at: i)
            return (kept.pointer, kept.capacity)
        }
        return (.allocate(capacity: count), count)
    }

    static func give(_ pointer: UnsafeMutablePointer<TorchSort.Pair>, capacity: Int) {
        lock.lock()
        defer { lock.unlock() }
        guard capacity <= largestKept else { pointer.deallocate(); return }
        free.append((pointer, capacity))
        if free.count > 2, let smallest = free.indices.min(by: { free[$0].capacity < free[$1].capacity }) {
            free.remove(at: smallest).pointer.deallocate()
        }
    }
}
