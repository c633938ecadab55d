import CKernels

/// The numeric loops of the merge methods: elementwise passes over whole tensors (split over the cores) and the
/// per-element sign election of mergekit's generalized task arithmetic. Parameters are parsed and checked by the
/// methods in TesseraMerge; these loops only see buffers of the sizes the methods checked.
public enum MergeKernels {
    /// a[i] -= b[i] (a task vector from a fine-tune and its base).
    public static func subtract(_ a: UnsafeMutableBufferPointer<Float>, _ b: UnsafeBufferPointer<Float>) {
        guard let ap = a.baseAddress, let bp = b.baseAddress else { return }
        let x = SharedMutablePointer(ap), y = SharedPointer(bp)
        Parallel.forChunks(min(a.count, b.count)) { _, r in for j in r { x[j] -= y[j] } }
    }

    /// out[i] = a[i] − b[i], over the shortest of the three (the same rounding as `subtract` in place).
    public static func difference(_ out: UnsafeMutableBufferPointer<Float>, _ a: UnsafeBufferPointer<Float>, _ b: UnsafeBufferPointer<Float>) {
        guard let op = out.baseAddress, let ap = a.baseAddress, let bp = b.baseAddress else { return }
        let o = SharedMutablePointer(op), x = SharedPointer(ap), y = SharedPointer(bp)
        Parallel.forChunks(min(out.count, a.count, b.count)) { _, r in for j in r { o[j] = x[j] - y[j] } }
    }

    /// y[i] += a · x[i].
    public static func addScaled(_ y: UnsafeMutableBufferPointer<Float>, _ a: Float, _ x: UnsafeBufferPointer<Float>) {
        guard let yp = y.baseAddress, let xp = x.baseAddress else { return }
        let out = SharedMutablePointer(yp), input = SharedPointer(xp)
        Parallel.forChunks(min(y.count, x.count)) { _, r in for j in r { out[j] += a * input[j] } }
    }

    /// o[i] = fma(x[i], w, o[i]), rounded once per element: torch's `addcmul_`, which mergekit's linear merge
    /// accumulates with (a separate multiply and add differs from it in about one element in ten).
    @inline(__always)
    public static func fusedMultiplyAdd(_ o: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ w: Float, count: Int) {
        tessera_fma_accumulate(o, x, w, count)
    }

    /// x[i] /= d.
    public static func divide(_ x: UnsafeMutableBufferPointer<Float>, by d: Float) {
        guard let base = x.baseAddress else { return }
        let p = SharedMutablePointer(base)
        Parallel.forChunks(x.count) { _, r in for j in r { p[j] /= d } }
    }

    /// x[i] *= f (serial: used after a scan that was serial too).
    public static func scale(_ x: UnsafeMutableBufferPointer<Float>, by f: Float) {
        for j in x.indices { x[j] *= f }
    }

    /// Σ|x[i]| in double, in index order.
    public static func l1(_ x: UnsafeBufferPointer<Float>) -> Double {
        var s = 0.0
        for v in x { s += Double(abs(v)) }
        return s
    }

    /// SplitMix64's output function (Steele, Lea & Flood 2014).
    @inline(__always)
    public static func mix64(_ z0: UInt64) -> UInt64 {
        var z = z0
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// DARE's drop with a counter-based generator: element j is zeroed unless
    /// mix64(key + (j + 1) · increment) >> 11 < limit (53 random bits against a threshold).
    public static func randomDrop(_ x: UnsafeMutableBufferPointer<Float>, key: UInt64, increment: UInt64, limit: UInt64) {
        guard let base = x.baseAddress else { return }
        let p = SharedMutablePointer(base)
        Parallel.forChunks(x.count) { _, r in
            for j in r {
                let u = mix64(key &+ UInt64(j &+ 1) &* increment) >> 11
                if u >= limit { p[j] = 0 }
            }
        }
    }

    /// How task arithmetic elects a sign per element.
    public enum Consensus: Sendable { case none, sum, count }

    /// mergekit's generalized task arithmetic over elements `r` of `models` weighted deltas, added to `out` in place:
    ///
    ///     wδ_i = w_i · δ_i;  vote = Σ_i wδ_i (sum) or Σ_i sign(wδ_i) (count);  elected sign = vote ≥ 0 ? + : −
    ///     mixed = Σ_{i agreeing} wδ_i,  divisor = Σ_{i agreeing} w_i (0 → 1)   (no consensus: all, Σ_i w_i → `divisor`)
    ///     out += λ · mixed [/ divisor when normalize]
    ///
    /// Works in blocks that stay in L1 cache, looping models outside and elements inside, so the inner loops are
    /// branch-free and vectorise whatever the number of models. Sums run over models in order, as mergekit's do.
    ///
    /// `keepFrom`: per model, the magnitude key (`MagnitudeSelect.key`) from which its entries count, the others as
    /// zeros: a magnitude trim applied here, block by block, instead of in a pass of its own over each delta.
    @inline(never)
    public static func taskArithmetic(_ r: Range<Int>, out: UnsafeMutablePointer<Float>, deltas d: UnsafePointer<UnsafeMutablePointer<Float>>,
                                      weights w: UnsafePointer<Float>, models m: Int, consensus: Consensus, normalize: Bool,
                                      lambda: Float, divisor: Float, keepFrom: UnsafePointer<UInt32>? = nil) {
        let block = 2048
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: (keepFrom == nil ? 3 : 3 + m) * block)
        defer { scratch.deallocate() }
        let vote = scratch, mixed = scratch + block, agreeing = scratch + 2 * block, trimmed = scratch + 3 * block
        var start = r.lowerBound
        while start < r.upperBound {
            let len = min(block, r.upperBound - start)
            let o = out + start
            if let keepFrom {
                for i in 0..<m {
                    let di = d[i] + start, ti = trimmed + i * block, from = keepFrom[i]
                    for j in 0..<len { ti[j] = di[j].bitPattern & 0x7FFF_FFFF >= from ? di[j] : 0 }
                }
            }
            // Model i's deltas in this block.
            func delta(_ i: Int) -> UnsafeMutablePointer<Float> { keepFrom == nil ? d[i] + start : trimmed + i * block }
            mixed.update(repeating: 0, count: len)
            if consensus == .none {
                for i in 0..<m {
                    let di = delta(i), wi = w[i]
                    for j in 0..<len { mixed[j] += di[j] * wi }
                }
                if normalize { for j in 0..<len { mixed[j] /= divisor } }
            } else {
                vote.update(repeating: 0, count: len)
                agreeing.update(repeating: 0, count: len)
                for i in 0..<m {
                    let di = delta(i), wi = w[i]
                    if consensus == .sum {
                        for j in 0..<len { vote[j] += di[j] * wi }
                    } else {
                        for j in 0..<len { let v = di[j] * wi; vote[j] += v > 0 ? 1 : (v < 0 ? -1 : 0) }
                    }
                }
                for i in 0..<m {
                    let di = delta(i), wi = w[i]
                    for j in 0..<len {
                        let v = di[j] * wi
                        let agrees = vote[j] >= 0 ? v > 0 : v < 0   // an exact zero vote elects +1; zeros never agree
                        mixed[j] += agrees ? v : 0
                        agreeing[j] += agrees ? wi : 0
                    }
                }
                if normalize { for j in 0..<len { mixed[j] /= agreeing[j] == 0 ? 1 : agreeing[j] } }
            }
            if lambda != 1 { for j in 0..<len { mixed[j] *= lambda } }
            for j in 0..<len { o[j] = o[j] + mixed[j] }
            start += len
        }
    }
}
