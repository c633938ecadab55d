/// Exact rank selection by magnitude in O(n), without sorting and without a copy of the tensor.
///
/// The magnitude key of a float is its bit pattern with the sign cleared: for every non-NaN float, ordering these
/// unsigned keys is ordering |x| (+0 and -0 share key 0; NaN keys sort above infinity). A two-pass radix select
/// finds the key at a given rank: pass 1 histograms the high 15 bits, pass 2 the low 16 bits of the elements in the
/// bucket that holds the rank. Both passes run over two cores with per-thread histograms.
///
/// Ties are ordered by flat index (lower index first), the deterministic order the reference spec uses in place of
/// torch's implementation-defined one, so "the k largest" is a set, not a choice.
public enum MagnitudeSelect {
    @inline(__always) public static func key(_ x: Float) -> UInt32 { x.bitPattern & 0x7FFF_FFFF }

    /// Where rank `rank` (0-based) falls in the order by key, descending (`descending`) or ascending:
    /// `value` is the key of the element at that rank, `before` the number of elements strictly before all
    /// elements with that key, `ties` the number of elements with that key.
    public struct Threshold: Equatable, Sendable {
        public var value: UInt32
        public var before: Int
        public var ties: Int
    }

    /// `rank` is clamped to 0..<x.count (this target runs without precondition checks); an empty buffer has no rank.
    public static func threshold(_ x: UnsafeBufferPointer<Float>, rank requested: Int, descending: Bool) -> Threshold {
        guard !x.isEmpty else { return Threshold(value: 0, before: 0, ties: 0) }
        let rank = min(max(requested, 0), x.count - 1)
        let hiBins = 1 << 15, loBins = 1 << 16
        // Pass 1: high 15 bits.
        let hist1 = histogram(x, bins: hiBins, highBitsOf: nil)
        var before = 0
        var bucket = 0
        if descending {
            var b = hiBins - 1
            while b >= 0 { if before + hist1[b] > rank { break }; before += hist1[b]; b -= 1 }
            bucket = b
        } else {
            var b = 0
            while b < hiBins { if before + hist1[b] > rank { break }; before += hist1[b]; b += 1 }
            bucket = b
        }
        // Pass 2: low 16 bits of the elements in that bucket.
        let hi = UInt32(bucket) << 16
        let hist2 = histogram(x, bins: loBins, highBitsOf: hi)
        var lo = 0
        if descending {
            var b = loBins - 1
            while b >= 0 { if before + hist2[b] > rank { break }; before += hist2[b]; b -= 1 }
            lo = b
        } else {
            var b = 0
            while b < loBins { if before + hist2[b] > rank { break }; before += hist2[b]; b += 1 }
            lo = b
        }
        return Threshold(value: hi | UInt32(lo), before: before, ties: hist2[lo])
    }

    /// Per-thread histograms, summed: of the high 15 key bits (`high` nil), or of the low 16 bits of the keys whose
    /// high bits equal `high`.
    private static func histogram(_ x: UnsafeBufferPointer<Float>, bins: Int, highBitsOf high: UInt32?) -> [Int] {
        let ranges = Parallel.chunkRanges(x.count)
        var partial = [UInt32](repeating: 0, count: bins * ranges.count)
        partial.withUnsafeMutableBufferPointer { h in
            let hp = SharedMutablePointer(h.baseAddress!)
            let src = x.baseAddress ?? UnsafePointer<Float>(bitPattern: MemoryLayout<Float>.alignment)!
            Parallel.forRanges(ranges) { c, range in
                countChunk(src, range, into: hp.base + c * bins, high: high)
            }
        }
        var total = [Int](repeating: 0, count: bins)
        for c in 0..<ranges.count {
            for b in 0..<bins { total[b] += Int(partial[c * bins + b]) }
        }
        return total
    }

    @inline(never)
    private static func countChunk(_ x: UnsafePointer<Float>, _ range: Range<Int>, into h: UnsafeMutablePointer<UInt32>, high: UInt32?) {
        if let high {
            for i in range {
                let k = key(x[i])
                if k & 0xFFFF_0000 == high { h[Int(k & 0xFFFF)] &+= 1 }
            }
        } else {
            for i in range { h[Int(key(x[i]) >> 16)] &+= 1 }
        }
    }

    /// Keeps the `k` largest-magnitude entries (ties at the threshold go to the lower flat indices) and sets every other
    /// entry to zero, in place. `k` must be in 1...count.
    public static func keepTopK(_ x: UnsafeMutableBufferPointer<Float>, k: Int) {
        let n = x.count
        if k >= n { return }
        let t = threshold(UnsafeBufferPointer(x), rank: k - 1, descending: true)
        let v = t.value
        let tiesKept = k - t.before
        // Keep every element at or above the threshold (a branch-free pass over two cores) ...
        Parallel.forChunks(n) { _, r in
            for i in r { x[i] = key(x[i]) >= v ? x[i] : 0 }
        }
        // ... then, when more elements share the threshold magnitude than fit (float32 magnitudes collide often in a
        // large tensor), drop the surplus ties with the highest flat indices, scanning from the end.
        var surplus = t.ties - tiesKept
        var i = n - 1
        while surplus > 0 && i >= 0 {
            if key(x[i]) == v { x[i] = 0; surplus -= 1 }
            i -= 1
        }
    }

    /// Membership of each element in ranks `lower..<upper` of the ascending magnitude order (ties by lower index
    /// first), as mergekit's `magnitude_outliers` (breadcrumbs) keeps them. Zeroes the others in place; returns the
    /// number kept. Serial: breadcrumbs is not on the hot path.
    @discardableResult
    public static func keepAscendingRanks(_ x: UnsafeMutableBufferPointer<Float>, lower: Int, upper: Int) -> Int {
        let n = x.count
        let lo = max(0, min(lower, n)), hi = max(lo, min(upper, n))
        if lo == hi { for i in 0..<n { x[i] = 0 }; return 0 }
        if lo == 0 && hi == n { return n }
        // rank < lo  <=>  key < a.value || (key == a.value && tie# < lo - a.before); same for hi.
        let a = lo > 0 ? threshold(UnsafeBufferPointer(x), rank: lo, descending: false) : nil
        let b = hi < n ? threshold(UnsafeBufferPointer(x), rank: hi, descending: false) : nil
        var tieA = 0, tieB = 0
        var kept = 0
        for i in 0..<n {
            let kx = key(x[i])
            var belowLower = false
            if let a {
                if kx < a.value { belowLower = true } else if kx == a.value { belowLower = tieA < lo - a.before; tieA += 1 }
            }
            var belowUpper = true
            if let b {
                if kx > b.value { belowUpper = false } else if kx == b.value { belowUpper = tieB < hi - b.before; tieB += 1 }
            }
            if !belowLower && belowUpper { kept += 1 } else { x[i] = 0 }
        }
        return kept
    }
}
