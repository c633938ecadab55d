import CKernels

/// Exact rank selection by magnitude in O(n), without sorting and without a copy of the tensor.
///
/// The magnitude key of a float is its bit pattern with the sign cleared: for every non-NaN float, ordering these
/// unsigned keys is ordering |x| (+0 and -0 share key 0; NaN keys sort above infinity). A two-pass radix select
/// finds the key at a given rank: pass 1 histograms the high 15 bits, pass 2 the low 16 bits of the elements in the
/// bucket that holds the rank. Both passes run over two cores with per-thread histograms. On a long buffer a sample
/// guesses the buckets that hold the rank first, and one pass counts the keys above them and keeps the keys in them
/// (an AVX-512 kernel): both histograms then come from the kept keys.
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
        if x.count >= sampledMinimum, let window = sampledBuckets(x, rank: rank, descending: descending),
           let found = threshold(x, rank: rank, descending: descending, inWindow: window) {
            return found
        }
        // Pass 1: high 15 bits.
        let hiBins = 1 << 15, loBins = 1 << 16
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
        return finish(hist2, high: hi, before: before, rank: rank, descending: descending)
    }

    /// The threshold from the low-bit histogram of the bucket holding the rank, `before` counting the elements ahead
    /// of that bucket.
    private static func finish(_ hist2: [Int], high: UInt32, before ahead: Int, rank: Int, descending: Bool) -> Threshold {
        let loBins = 1 << 16
        var before = ahead
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
        return Threshold(value: high | UInt32(lo), before: before, ties: hist2[lo])
    }

    /// Buffers at least this long are read once instead of twice by `threshold` when a sample finds the bucket.
    static let sampledMinimum = 1 << 19

    /// The high-bit buckets that hold rank `rank` with near certainty, from a sample of 32,768 keys: 256 runs of 128
    /// consecutive elements (few cache lines) spread evenly over `x`; from the bucket of the sample rank five
    /// standard deviations of a sample quantile (plus 64, for tensors whose rows differ) before the rank's own to
    /// that as far after it. A wrong guess costs the two passes it was meant to save, never a wrong threshold.
    static func sampledBuckets(_ x: UnsafeBufferPointer<Float>, rank: Int, descending: Bool) -> ClosedRange<Int>? {
        let runs = 256, runLength = 128, samples = runs * runLength
        guard x.count >= samples else { return nil }
        var hist = [Int32](repeating: 0, count: 1 << 15)
        let step = (x.count - runLength) / (runs - 1)
        for r in 0..<runs {
            let start = r * step
            for i in start..<(start + runLength) { hist[Int(key(x[i]) >> 16)] += 1 }
        }
        let q = Double(rank) / Double(x.count)
        let center = q * Double(samples), margin = 5 * (Double(samples) * q * (1 - q)).squareRoot() + 64
        let first = max(0, Int(center - margin)), last = min(samples - 1, Int(center + margin))
        // The buckets of sample ranks `first` and `last`, in the order of the ranks.
        var seen = 0, lowRankBucket = -1, highRankBucket = -1
        for step in 0..<(1 << 15) {
            let b = descending ? (1 << 15) - 1 - step : step
            seen += Int(hist[b])
            if lowRankBucket < 0 && seen > first { lowRankBucket = b }
            if seen > last { highRankBucket = b; break }
        }
        guard lowRankBucket >= 0, highRankBucket >= 0 else { return nil }
        return min(lowRankBucket, highRankBucket)...max(lowRankBucket, highRankBucket)
    }

    /// One pass over the data instead of two, when the sample's window of high-bit buckets holds the rank: the keys
    /// above the window are counted and the keys in it kept (`tessera_magnitude_window`, CKernels), and both
    /// histograms come from the kept keys. Nil when the rank's key is outside the window (the sample misled) or a
    /// chunk had more keys in the window than an eighth of its length (the window is then too coarse to be worth
    /// keeping): the caller then runs the two passes over the data.
    static func threshold(_ x: UnsafeBufferPointer<Float>, rank: Int, descending: Bool, inWindow window: ClosedRange<Int>) -> Threshold? {
        guard let src = x.baseAddress else { return nil }
        let ranges = Parallel.chunkRanges(x.count)
        let capacities = ranges.map { $0.count / 8 }
        var starts = [0]
        for c in capacities { starts.append(starts[starts.count - 1] + c) }
        let keys = UnsafeMutablePointer<UInt32>.allocate(capacity: max(1, starts[starts.count - 1]))
        defer { keys.deallocate() }
        var counts = [Int](repeating: 0, count: ranges.count), aboves = counts
        let low = UInt32(window.lowerBound), width = UInt32(window.upperBound - window.lowerBound)
        counts.withUnsafeMutableBufferPointer { countsBuffer in
            aboves.withUnsafeMutableBufferPointer { abovesBuffer in
                let inside = SharedMutablePointer(countsBuffer.baseAddress!), over = SharedMutablePointer(abovesBuffer.baseAddress!)
                let out = SharedMutablePointer(keys)
                Parallel.forRanges(ranges) { c, range in
                    var above = 0
                    inside[c] = tessera_magnitude_window(src + range.lowerBound, range.count, low, width, out.base + starts[c],
                                                         capacities[c], &above)
                    over[c] = above
                }
            }
        }
        guard counts.indices.allSatisfy({ counts[$0] <= capacities[$0] }) else { return nil }
        let kept = counts.reduce(0, +), above = aboves.reduce(0, +)
        // The elements ahead of the window in the order asked for: those above it (descending) or below it.
        var before = descending ? above : x.count - above - kept
        guard rank >= before && rank < before + kept else { return nil }
        var hist1 = [Int](repeating: 0, count: Int(width) + 1)
        for c in ranges.indices {
            for k in UnsafeBufferPointer(start: keys + starts[c], count: counts[c]) { hist1[Int((k >> 16) - low)] += 1 }
        }
        var bucket = 0
        if descending {
            var b = Int(width)
            while b >= 0 { if before + hist1[b] > rank { break }; before += hist1[b]; b -= 1 }
            bucket = b
        } else {
            var b = 0
            while b <= Int(width) { if before + hist1[b] > rank { break }; before += hist1[b]; b += 1 }
            bucket = b
        }
        let high = (low + UInt32(bucket)) << 16
        var hist2 = [Int](repeating: 0, count: 1 << 16)
        for c in ranges.indices {
            for k in UnsafeBufferPointer(start: keys + starts[c], count: counts[c]) where k & 0xFFFF_0000 == high {
                hist2[Int(k & 0xFFFF)] += 1
            }
        }
        return finish(hist2, high: high, before: before, rank: rank, descending: descending)
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
