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

    /// What the replay sorts and how it compares: libstdc++ only ever asks `less`, and the block partition compares
    /// eight consecutive elements at once with a pivot prepared for it.
    protocol Ordering {
        associatedtype Element
        associatedtype Pivot
        func less(_ a: Element, _ b: Element) -> Bool
        func pivot(_ p: Element) -> Pivot
        /// Bit l set when element l of the eight from `p` on is not less than the pivot.
        func notLessThanPivot(_ p: UnsafeRawPointer, _ pivot: Pivot) -> Int
        /// Bit 7 − l set when the pivot is not less than element l of the eight from `p` on.
        func pivotNotLessThan(_ p: UnsafeRawPointer, _ pivot: Pivot) -> Int
    }

    /// Eight lanes of 0 or 1 as an 8-bit mask, lane l at bit l (`ascending`) or at bit 7 − l. The lanes narrowed to
    /// bytes are multiplied by a constant whose byte 7 − l is 2^l (resp. 2^(7−l)): each lane's product lands in the
    /// top byte at its bit, every other product below it without carries. (Swift has no movemask, and a sum of
    /// weighted lanes compiles to a shuffle per lane.)
    @inline(__always) static func laneBits(_ lanes: SIMD8<UInt32>, ascending: Bool) -> Int {
        let word = unsafeBitCast(SIMD8<UInt8>(truncatingIfNeeded: lanes), to: UInt64.self)
        return Int(truncatingIfNeeded: (word &* (ascending ? 0x0102_0408_1020_4080 : 0x8040_2010_0804_0201)) >> 56)
    }

    /// Float keys, compared as floats (NaN compares false both ways).
    protocol FloatKeyOrdering: Ordering where Pivot == SIMD8<Float> {
        func key(_ x: Element) -> Float
        /// The keys of the eight elements from `p` on.
        func keys8(_ p: UnsafeRawPointer) -> SIMD8<Float>
    }

    /// (key, index) pairs: 8 bytes per element.
    struct PairOrdering: FloatKeyOrdering {
        typealias Element = Pair
        @inline(__always) func key(_ x: Pair) -> Float { x.key }
        @inline(__always) func keys8(_ p: UnsafeRawPointer) -> SIMD8<Float> { p.loadUnaligned(as: SIMD16<Float>.self).evenHalf }
    }

    /// A top-k's 4-byte codes: an element whose magnitude is not the one tied at the cut is the bit pattern of its key
    /// −|x| (sign bit set: −0 and NaN included); one tied at the cut is its index with the sign bit clear, and
    /// compares as `tieKey`. Only the tied elements' identities are ever read back, so the others need none, and the
    /// replay moves half the bytes of (key, index) pairs (GPT-2's embedding: 154 MB instead of 309 MB). Compared as
    /// floats, for tensors with NaN magnitudes; `TieCodeIntegerOrdering` compares the same codes otherwise.
    struct TieCodeOrdering: FloatKeyOrdering {
        typealias Element = UInt32
        let tieKey: Float
        @inline(__always) func key(_ x: UInt32) -> Float { x & 0x8000_0000 != 0 ? Float(bitPattern: x) : tieKey }
        @inline(__always) func keys8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
            // Bit operations only: a lane-wise `replacing(with:where:)` compiled to a branch per lane.
            let codes = p.loadUnaligned(as: SIMD8<UInt32>.self)
            let keyLanes = unsafeBitCast(unsafeBitCast(codes, to: SIMD8<Int32>.self) &>> 31, to: SIMD8<UInt32>.self)
            let bits = (codes & keyLanes) | (SIMD8<UInt32>(repeating: tieKey.bitPattern) & ~keyLanes)
            return unsafeBitCast(bits, to: SIMD8<Float>.self)
        }
    }

    /// `TieCodeOrdering`'s codes compared as integers: the same order as long as no magnitude is NaN (key −|x|
    /// ascending is magnitude bits descending, −0 and +0 both 0; a tied code's magnitude is `tie`). The block
    /// partition then needs one integer compare per lane and no key: a non-tied code is its magnitude with the sign
    /// bit set, a tied one its index with the sign bit clear, so that with the sign bit flipped (or not) a signed
    /// comparison orders the non-tied codes by magnitude and puts every tied code below (or above) them all. Which of
    /// the two sorts the tied codes to the right side of the pivot depends only on `tie` against the pivot's
    /// magnitude, once per partition.
    struct TieCodeIntegerOrdering: Ordering {
        /// The magnitude bits tied at the cut.
        let tie: UInt32

        @inline(__always) func magnitude(_ code: UInt32) -> UInt32 { code & 0x8000_0000 != 0 ? code & 0x7FFF_FFFF : tie }
        @inline(__always) func less(_ a: UInt32, _ b: UInt32) -> Bool { magnitude(a) > magnitude(b) }

        /// Per scan, a flip and a bound (signed): the left scan passes an element while (code ^ leftFlip) > leftBound
        /// (its magnitude is above the pivot's), the right scan while rightBound > (code ^ rightFlip) (below it).
        struct Pivot {
            var leftFlip, leftBound, rightFlip, rightBound: SIMD8<Int32>
        }

        @inline(__always) func pivot(_ p: UInt32) -> Pivot {
            let m = magnitude(p)
            // Flipped, a non-tied code is its magnitude and a tied one is negative; not flipped, a non-tied code is
            // negative (compared with m | sign it orders by magnitude) and a tied one is not. The left scan must pass
            // the tied codes exactly when tie > m, the right scan exactly when tie < m.
            let leftFlip: UInt32 = tie > m ? 0 : 0x8000_0000
            let leftBound: UInt32 = tie > m ? m | 0x8000_0000 : m
            let rightFlip: UInt32 = tie >= m ? 0 : 0x8000_0000
            let rightBound: UInt32 = tie >= m ? m | 0x8000_0000 : m
            func lanes(_ x: UInt32) -> SIMD8<Int32> { SIMD8(repeating: Int32(bitPattern: x)) }
            return Pivot(leftFlip: lanes(leftFlip), leftBound: lanes(leftBound), rightFlip: lanes(rightFlip), rightBound: lanes(rightBound))
        }

        @inline(__always) func notLessThanPivot(_ p: UnsafeRawPointer, _ pivot: Pivot) -> Int {
            let codes = p.loadUnaligned(as: SIMD8<Int32>.self) ^ pivot.leftFlip
            let lessThanPivot = SIMD8<UInt32>(repeating: 0).replacing(with: 1, where: codes .> pivot.leftBound)
            return laneBits(lessThanPivot, ascending: true) ^ 0xFF
        }

        @inline(__always) func pivotNotLessThan(_ p: UnsafeRawPointer, _ pivot: Pivot) -> Int {
            let codes = p.loadUnaligned(as: SIMD8<Int32>.self) ^ pivot.rightFlip
            let greaterThanPivot = SIMD8<UInt32>(repeating: 0).replacing(with: 1, where: pivot.rightBound .> codes)
            return laneBits(greaterThanPivot, ascending: false) ^ 0xFF
        }
    }

    /// Indices of `keys` in the order torch's `sort(keys, descending:)` returns them (non-stable CPU sort).
    public static func order(_ keys: UnsafeBufferPointer<Float>, descending: Bool) -> [UInt32] {
        let n = keys.count
        let pairs = UnsafeMutablePointer<Pair>.allocate(capacity: max(n, 1))
        defer { pairs.deallocate() }
        // A descending sort compares a > b, which for the non-NaN magnitudes sorted here is −a < −b: one ascending
        // routine serves both.
        for i in 0..<n { pairs[i] = Pair(key: descending ? -keys[i] : keys[i], index: UInt32(truncatingIfNeeded: i)) }
        sort(pairs, n, PairOrdering())
        return (0..<n).map { pairs[$0].index }
    }

    /// libstdc++'s `std::sort(first, first + n, less)`.
    static func sort<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ n: Int, _ o: O) {
        guard n > 1 else { return }
        var lg = 0
        while (1 << (lg + 1)) <= n { lg += 1 }
        introsortLoop(a, 0, n, depth: 2 * lg, o)
        if n > threshold {
            insertionSort(a, 0, threshold, o)
            for i in threshold..<n { linearInsert(a, i, o) }
        } else {
            insertionSort(a, 0, n, o)
        }
    }

    static let threshold = 16

    static func introsortLoop<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ first: Int, _ last0: Int, depth depth0: Int, _ o: O) {
        var last = last0, depth = depth0
        while last - first > threshold {
            if depth == 0 {
                heapSort(a, first, last, o)
                return
            }
            depth -= 1
            let mid = first + (last - first) / 2
            moveMedianToFirst(a, first, first + 1, mid, last - 1, o)
            let cut = unguardedPartition(a, first + 1, last, pivot: first, o)
            introsortLoop(a, cut, last, depth: depth, o)
            last = cut
        }
    }

    @inline(__always) static func swapAt<E>(_ a: UnsafeMutablePointer<E>, _ i: Int, _ j: Int) {
        let t = a[i]; a[i] = a[j]; a[j] = t
    }

    static func moveMedianToFirst<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ result: Int, _ x: Int, _ y: Int, _ z: Int, _ o: O) {
        @inline(__always) func less(_ x: O.Element, _ y: O.Element) -> Bool { o.less(x, y) }
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

    /// For each 8-bit mask, at 2·mask the positions of its set bits in ascending order, one per byte (the rest zero),
    /// and at 2·mask + 1 their number. Read through a pointer in the partition's loops (no bounds checks there).
    nonisolated(unsafe) static let offsetTable: UnsafePointer<UInt64> = {
        let table = UnsafeMutablePointer<UInt64>.allocate(capacity: 512)
        for mask in 0..<256 {
            var packed: UInt64 = 0, count: UInt64 = 0
            for bit in 0..<8 where mask & (1 << bit) != 0 {
                packed |= UInt64(bit) << (8 * count)
                count += 1
            }
            table[2 * mask] = packed
            table[2 * mask + 1] = count
        }
        return UnsafePointer(table)
    }()

    /// libstdc++'s `__unguarded_partition`: Hoare's scheme, which swaps the k-th element from the left that is not
    /// less than the pivot with the k-th from the right that the pivot is not less than, for k = 1, 2, … until the two
    /// cross. On a long range the pairs are found a block at a time without branches (BlockQuicksort's scheme), which
    /// swaps exactly the same pairs in the same order (every left block lies before every right block, so each pair
    /// is swapped by Hoare's loop too); the scalar loop then resumes after the last pair swapped, where Hoare's loop
    /// would be, and finds the crossing. The result is the scalar loop's, element for element.
    static func unguardedPartition<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ first0: Int, _ last0: Int, pivot: Int, _ o: O) -> Int {
        @inline(__always) func less(_ x: O.Element, _ y: O.Element) -> Bool { o.less(x, y) }
        var first = first0, last = last0
        let p = a[pivot]
        if last0 - first0 >= 4 * block {
            let pv = o.pivot(p)
            let table = offsetTable
            let stride = MemoryLayout<O.Element>.stride
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
                        // Eight elements at a time: those not less than the pivot as a bit mask, and their offsets
                        // from the table (written whole; only the first `count` of them are kept).
                        let bits = o.notLessThanPivot(base + i &* stride, pv)
                        UnsafeMutableRawPointer(offL + numL).storeBytes(of: table[2 &* bits] &+ UInt64(i) &* 0x0101_0101_0101_0101, as: UInt64.self)
                        numL &+= Int(truncatingIfNeeded: table[2 &* bits &+ 1])
                        i &+= 8
                    }
                }
                if numR == 0 {
                    startR = 0
                    let top = UnsafeRawPointer(a + (rb &- 128))  // the block's elements, read from its end
                    var i = 0
                    while i < 128 {
                        // Lane l holds the element at offset i + 7 − l from the end: its bit is 7 − l.
                        let bits = o.pivotNotLessThan(top + (120 &- i) &* stride, pv)
                        UnsafeMutableRawPointer(offR + numR).storeBytes(of: table[2 &* bits] &+ UInt64(i) &* 0x0101_0101_0101_0101, as: UInt64.self)
                        numR &+= Int(truncatingIfNeeded: table[2 &* bits &+ 1])
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

    static func linearInsert<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ i: Int, _ o: O) {
        let value = a[i]
        var j = i - 1
        while o.less(value, a[j]) { a[j + 1] = a[j]; j -= 1 }
        a[j + 1] = value
    }

    static func insertionSort<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ first: Int, _ last: Int, _ o: O) {
        guard last - first > 1 else { return }
        for i in (first + 1)..<last {
            if o.less(a[i], a[first]) {
                let value = a[i]
                var j = i
                while j > first { a[j] = a[j - 1]; j -= 1 }
                a[first] = value
            } else {
                linearInsert(a, i, o)
            }
        }
    }

    /// `std::__adjust_heap` followed by its `__push_heap` (a max-heap under `less`).
    static func adjustHeap<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ first: Int, _ hole0: Int, _ length: Int, _ value: O.Element, _ o: O) {
        @inline(__always) func less(_ x: O.Element, _ y: O.Element) -> Bool { o.less(x, y) }
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
    static func heapSort<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ first: Int, _ last: Int, _ o: O) {
        let n = last - first
        if n >= 2 {
            var parent = (n - 2) / 2
            while true {
                adjustHeap(a, first, parent, n, a[first + parent], o)
                if parent == 0 { break }
                parent -= 1
            }
        }
        var end = last
        while end - first > 1 {
            end -= 1
            let value = a[end]
            a[end] = a[first]
            adjustHeap(a, first, 0, end - first, value, o)
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

    /// The magnitude key from which mergekit's `magnitude` sparsifier keeps entries, for a caller that masks them
    /// itself (an entry is kept when its `MagnitudeSelect.key` is at least the result) instead of a pass zeroing the
    /// rest: only the tied entries torch puts past the cut are zeroed here (a zero is kept or dropped alike). `k` in
    /// 1...count; 0 (every key) when all are kept.
    public static func topKThreshold(_ x: UnsafeMutableBufferPointer<Float>, k: Int) -> UInt32 {
        let n = x.count
        if k >= n { return 0 }
        let t = MagnitudeSelect.threshold(UnsafeBufferPointer(x), rank: k - 1, descending: true)
        if t.before + t.ties > k { keepRanks(x, lower: 0, upper: k, descending: true, tie: t, zeroing: false) }
        return t.value
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
    /// `tie`: for a top-k (lower 0, descending), the radix select's threshold at rank k − 1; `zeroing` false leaves
    /// that top-k's untied entries as they are (see `topKThreshold`; past Int32.max elements the pairs' replay zeroes
    /// them all the same, which a caller masking from the threshold cannot tell apart).
    static func keepRanks(_ x: UnsafeMutableBufferPointer<Float>, lower: Int, upper: Int, descending: Bool,
                          tie: MagnitudeSelect.Threshold? = nil, zeroing: Bool = true) {
        let n = x.count
        var lg = 0
        while (1 << (lg + 1)) <= n { lg += 1 }
        let values = SharedMutablePointer(x.baseAddress!)
        if let tie, lower == 0 && descending && upper < n && n <= Int(Int32.max) {
            // A top-k: every magnitude above the one tied at the cut is kept and every one below it dropped, in the
            // pass that builds the codes (from the values before they are dropped), instead of scattered writes for
            // most of the tensor; of the tied ones, the before + ties − k that torch puts at ranks ≥ k are dropped.
            let v = tie.value
            let (raw, bytes) = ReplayScratch.take(max(n, 1) * MemoryLayout<UInt32>.stride)
            defer { ReplayScratch.give(raw, bytes: bytes) }
            let codes = raw.bindMemory(to: UInt32.self, capacity: max(n, 1))
            let out = SharedMutablePointer(codes)
            // Per chunk: whether a magnitude is NaN (compared as integers it would have a place in the order; torch's
            // float comparisons give it none, and the replay then compares floats as they do).
            var nanSeen = [Bool](repeating: false, count: Parallel.chunkCount(n, minimum: Parallel.minimumParallelCount))
            nanSeen.withUnsafeMutableBufferPointer { seen in
                let flags = SharedMutablePointer(seen.baseAddress!)
                Parallel.forChunks(n) { c, r in
                    var largest: UInt32 = 0
                    if zeroing {
                        for i in r {
                            let value = values[i]
                            let m = MagnitudeSelect.key(value)
                            out[i] = m == v ? UInt32(truncatingIfNeeded: i) : m | 0x8000_0000
                            values[i] = m >= v ? value : 0
                            largest = max(largest, m)
                        }
                    } else {
                        for i in r {
                            let m = MagnitudeSelect.key(values[i])
                            out[i] = m == v ? UInt32(truncatingIfNeeded: i) : m | 0x8000_0000
                            largest = max(largest, m)
                        }
                    }
                    flags[c] = largest > 0x7F80_0000
                }
            }
            if nanSeen.contains(true) {
                select(codes, 0, n, depth: 2 * lg, cuts: [lower, upper], TieCodeOrdering(tieKey: -Float(bitPattern: v)))
            } else {
                select(codes, 0, n, depth: 2 * lg, cuts: [lower, upper], TieCodeIntegerOrdering(tie: v))
            }
            var surplus = tie.before + tie.ties - upper
            var r = upper
            while surplus > 0 && r < n {
                if codes[r] & 0x8000_0000 == 0 { x[Int(codes[r])] = 0; surplus -= 1 }
                r += 1
            }
            return
        }
        let (raw, bytes) = ReplayScratch.take(max(n, 1) * MemoryLayout<Pair>.stride)
        defer { ReplayScratch.give(raw, bytes: bytes) }
        let pairs = raw.bindMemory(to: Pair.self, capacity: max(n, 1))
        let out = SharedMutablePointer(pairs)
        Parallel.forChunks(n) { _, r in
            for i in r { out[i] = Pair(key: descending ? -abs(values[i]) : abs(values[i]), index: UInt32(truncatingIfNeeded: i)) }
        }
        select(pairs, 0, n, depth: 2 * lg, cuts: [lower, upper], PairOrdering())
        for r in 0..<lower { x[Int(pairs[r].index)] = 0 }
        for r in upper..<n { x[Int(pairs[r].index)] = 0 }
    }

    /// Bytes a top-k trim of `n` elements holds while it replays torch's order (the codes), at most.
    public static func topKReplayBytes(_ n: Int) -> Int { n * MemoryLayout<UInt32>.stride }

    /// `introsortLoop` restricted to the ranges holding a cut (a cut c separates ranks c − 1 and c).
    static func select<O: Ordering>(_ a: UnsafeMutablePointer<O.Element>, _ first: Int, _ last0: Int, depth depth0: Int, cuts: [Int], _ o: O) {
        var last = last0, depth = depth0
        func holdsCut(_ lo: Int, _ hi: Int) -> Bool { cuts.contains { $0 > lo && $0 < hi } }
        while last - first > threshold {
            if !holdsCut(first, last) { return }
            if depth == 0 {
                heapSort(a, first, last, o)
                return
            }
            depth -= 1
            let mid = first + (last - first) / 2
            moveMedianToFirst(a, first, first + 1, mid, last - 1, o)
            let cut = unguardedPartition(a, first + 1, last, pivot: first, o)
            select(a, cut, last, depth: depth, cuts: cuts, o)
            last = cut
        }
        if holdsCut(first, last) { insertionSort(a, first, last, o) }
    }
}

extension TorchSort.FloatKeyOrdering {
    @inline(__always) func less(_ a: Element, _ b: Element) -> Bool { key(a) < key(b) }
    @inline(__always) func pivot(_ p: Element) -> SIMD8<Float> { SIMD8(repeating: key(p)) }
    @inline(__always) func notLessThanPivot(_ p: UnsafeRawPointer, _ pivot: SIMD8<Float>) -> Int {
        TorchSort.laneBits(SIMD8<UInt32>(repeating: 0).replacing(with: 1, where: .!(keys8(p) .< pivot)), ascending: true)
    }
    @inline(__always) func pivotNotLessThan(_ p: UnsafeRawPointer, _ pivot: SIMD8<Float>) -> Int {
        TorchSort.laneBits(SIMD8<UInt32>(repeating: 0).replacing(with: 1, where: .!(pivot .< keys8(p))), ascending: false)
    }
}

/// The replay's buffers (codes or (value, index) pairs), kept for the next tensor: a merge trims tensor after
/// tensor, two models at a time, and a fresh buffer costs the kernel a zeroed page every 4 KiB (as much time as the
/// partitions, on a 124M-parameter model). At most two buffers of at most 64 MiB are kept.
enum ReplayScratch {
    nonisolated(unsafe) private static var free: [(pointer: UnsafeMutableRawPointer, bytes: Int)] = []
    private static let lock = NSLock()
    static let largestKept = 64 << 20

    /// A buffer of at least `count` bytes, aligned for pairs, and its size.
    static func take(_ count: Int) -> (UnsafeMutableRawPointer, Int) {
        lock.lock()
        defer { lock.unlock() }
        if let i = free.firstIndex(where: { $0.bytes >= count }) {
            let kept = free.remove(at: i)
            return (kept.pointer, kept.bytes)
        }
        return (.allocate(byteCount: count, alignment: 16), count)
    }

    static func give(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        lock.lock()
        defer { lock.unlock() }
        guard bytes <= largestKept else { pointer.deallocate(); return }
        free.append((pointer, bytes))
        if free.count > 2, let smallest = free.indices.min(by: { free[$0].bytes < free[$1].bytes }) {
            free.remove(at: smallest).pointer.deallocate()
        }
    }
}
