/// torch's float32 CPU reductions, replayed so that methods whose results depend on a whole-tensor or whole-row sum
/// or norm (slerp, nuslerp, multislerp, karcher, model_stock, sce, arcee_fusion, the L1 rescale of DARE/DELLA) give
/// mergekit's float32 values bit for bit. The one implementation of these orders in tessera: every method calls it.
///
/// Found by replaying candidate orders against torch 2.13 (x86-64; torch dispatches its reductions to the AVX2 kernels,
/// also on AVX-512 machines) on random tensors, and pinned by MergeDTypeTests' `reductionsAreTorchs`:
/// - `sum` over a contiguous run of n ≥ 8 floats (SumKernel.cpp's `cascade_sum`, `vectorized_inner_sum`): 8-lane
///   vectors, grouped 4 at a time into a multi-level cascade (`multi_row_sum`: level width 2^max(4, ⌈log₂ groups⌉/4),
///   four levels) whose four partial vectors are added in order, leftover vectors into the first; then the scalar tail
///   from 0, then the 8 lanes in order. Below 8 floats the same cascade runs on scalars (`row_sum`), four at a time.
/// - `vector_norm` (p = 2) over a contiguous run: 8-lane accumulators of x·x (multiply, then add), the lanes added in
///   order, then each tail entry's square (rounded) added in order, then the correctly rounded square root (597 of
///   600 random runs of 13 to 333 entries bit for bit against `torch.norm(x, dim=-1)`, which is `vector_norm`; a
///   fused multiply-add in the tail matched fewer). For runs shorter than 8 floats torch takes another path, which this
///   replays only approximately.
/// - A full reduction of more than 32,768 elements is split over torch's threads (`parallel_reduce`), so mergekit's
///   own float32 result then depends on its thread count; the serial order here matches a one-thread run.
///
/// For 16-bit merge dtypes the methods use the `wide` reductions instead (see `TorchRounding`).
public enum TorchReductions {
    static let lanes = 8
    static let ilp = 4

    /// `x.sum()` of contiguous float32 values, in torch's order.
    public static func sum(_ x: UnsafeBufferPointer<Float>) -> Float {
        guard let p = x.baseAddress else { return 0 }
        let raw = UnsafeRawPointer(p)
        return cascadeSum(count: x.count, vector: { raw.loadUnaligned(fromByteOffset: $0 * 32, as: SIMD8<Float>.self) }, scalar: { p[$0] })
    }

    /// `x.abs().sum()` (mergekit's L1 norm) of contiguous float32 values, in torch's order, without a copy.
    public static func sumOfMagnitudes(_ x: UnsafeBufferPointer<Float>) -> Float {
        guard let p = x.baseAddress else { return 0 }
        let raw = UnsafeRawPointer(p)
        let signMask = SIMD8<UInt32>(repeating: 0x7FFF_FFFF)
        return cascadeSum(
            count: x.count,
            vector: { unsafeBitCast(raw.loadUnaligned(fromByteOffset: $0 * 32, as: SIMD8<UInt32>.self) & signMask, to: SIMD8<Float>.self) },
            scalar: { abs(p[$0]) })
    }

    /// `torch.linalg.vector_norm(x)` (also `torch.norm(x)`) of contiguous float32 values.
    public static func norm(_ x: UnsafeBufferPointer<Float>) -> Float {
        let n = x.count
        guard let p = x.baseAddress else { return 0 }
        var acc = SIMD8<Float>(repeating: 0)
        let body = n - n % lanes
        let raw = UnsafeRawPointer(p)
        var d = 0
        while d < body {
            let v = raw.loadUnaligned(fromByteOffset: d * 4, as: SIMD8<Float>.self)
            acc = acc + v * v
            d += lanes
        }
        var total = acc[0]
        for l in 1..<lanes { total = total + acc[l] }
        while d < n { total = total + p[d] * p[d]; d += 1 }
        return total.squareRoot()
    }

    /// `vector_norm(a − b)` of contiguous float32 values, without the difference tensor (each entry the same float32
    /// subtraction torch makes, then `norm`'s order).
    static func normOfDifference(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        let body = n - n % lanes
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        var d = 0
        while d < body {
            let v = ra.loadUnaligned(fromByteOffset: d * 4, as: SIMD8<Float>.self) - rb.loadUnaligned(fromByteOffset: d * 4, as: SIMD8<Float>.self)
            acc = acc + v * v
            d += lanes
        }
        var total = acc[0]
        for l in 1..<lanes { total = total + acc[l] }
        while d < n { let v = a[d] - b[d]; total = total + v * v; d += 1 }
        return total.squareRoot()
    }

    /// `((a − o) * (c − o)).sum()` of contiguous float32 values in `sum`'s order, without the temporary tensors.
    static func sumOfDifferenceProducts(_ a: UnsafePointer<Float>, _ c: UnsafePointer<Float>, _ o: UnsafePointer<Float>, count n: Int) -> Float {
        let ra = UnsafeRawPointer(a), rc = UnsafeRawPointer(c), ro = UnsafeRawPointer(o)
        return cascadeSum(
            count: n,
            vector: { v in
                let base = ro.loadUnaligned(fromByteOffset: v * 32, as: SIMD8<Float>.self)
                return (ra.loadUnaligned(fromByteOffset: v * 32, as: SIMD8<Float>.self) - base) * (rc.loadUnaligned(fromByteOffset: v * 32, as: SIMD8<Float>.self) - base)
            },
            scalar: { j in (a[j] - o[j]) * (c[j] - o[j]) })
    }

    /// The sum of the tensor (x / a) · (y / b) (slerp's dot product of the normalised tensors), in `sum`'s order,
    /// without the temporary tensor torch makes: each entry is rounded as torch rounds it (two quotients, a product).
    static func sumOfQuotientProducts(_ x: UnsafeBufferPointer<Float>, _ y: UnsafeBufferPointer<Float>, _ a: Float, _ b: Float) -> Float {
        guard let px = x.baseAddress, let py = y.baseAddress else { return 0 }
        let rx = UnsafeRawPointer(px), ry = UnsafeRawPointer(py)
        let va = SIMD8<Float>(repeating: a), vb = SIMD8<Float>(repeating: b)
        return cascadeSum(
            count: min(x.count, y.count),
            vector: { (rx.loadUnaligned(fromByteOffset: $0 * 32, as: SIMD8<Float>.self) / va) * (ry.loadUnaligned(fromByteOffset: $0 * 32, as: SIMD8<Float>.self) / vb) },
            scalar: { (px[$0] / a) * (py[$0] / b) })
    }

    public static func sum(_ x: [Float]) -> Float { x.withUnsafeBufferPointer { sum($0) } }
    public static func norm(_ x: [Float]) -> Float { x.withUnsafeBufferPointer { norm($0) } }

    /// The cascade of `sum`, over values given by `vector` (8-lane vector v: values 8v..<8v+8) and `scalar`, so that
    /// a transformed sum (magnitudes) runs in the same order without materialising its input.
    @inline(__always)
    static func cascadeSum(count n: Int, vector load: (Int) -> SIMD8<Float>, scalar: (Int) -> Float) -> Float {
        if n < lanes {
            // row_sum on scalars: at most one row of four, so the cascade never runs: four partials (zero or the first
            // four values), the rest into the first, then the four added in order.
            var p0: Float = 0, p1: Float = 0, p2: Float = 0, p3: Float = 0
            var j = 0
            if n >= ilp {
                p0 += scalar(0); p1 += scalar(1); p2 += scalar(2); p3 += scalar(3)
                j = ilp
            }
            while j < n { p0 += scalar(j); j += 1 }
            p0 += p1; p0 += p2; p0 += p3
            return p0
        }
        let vectors = n / lanes, rows = vectors / ilp
        var ceilLog2 = 0
        while (1 << ceilLog2) < rows { ceilLog2 += 1 }
        let power = max(4, ceilLog2 / 4)
        let step = 1 << power, mask = step - 1
        let zero = SIMD8<Float>(repeating: 0)
        // acc[level][k]
        var a0 = (zero, zero, zero, zero), a1 = a0, a2 = a0, a3 = a0
        var i = 0
        while i + step <= rows {
            for _ in 0..<step {
                let v = i * ilp
                a0.0 += load(v); a0.1 += load(v + 1); a0.2 += load(v + 2); a0.3 += load(v + 3)
                i += 1
            }
            a1.0 += a0.0; a1.1 += a0.1; a1.2 += a0.2; a1.3 += a0.3; a0 = (zero, zero, zero, zero)
            if i & (mask << power) != 0 { continue }
            a2.0 += a1.0; a2.1 += a1.1; a2.2 += a1.2; a2.3 += a1.3; a1 = (zero, zero, zero, zero)
            if i & (mask << (2 * power)) != 0 { continue }
            a3.0 += a2.0; a3.1 += a2.1; a3.2 += a2.2; a3.3 += a2.3; a2 = (zero, zero, zero, zero)
        }
        while i < rows {
            let v = i * ilp
            a0.0 += load(v); a0.1 += load(v + 1); a0.2 += load(v + 2); a0.3 += load(v + 3)
            i += 1
        }
        a0.0 += a1.0; a0.1 += a1.1; a0.2 += a1.2; a0.3 += a1.3
        a0.0 += a2.0; a0.1 += a2.1; a0.2 += a2.2; a0.3 += a2.3
        a0.0 += a3.0; a0.1 += a3.1; a0.2 += a3.2; a0.3 += a3.3
        var s = a0.0
        for v in (rows * ilp)..<vectors { s += load(v) }
        s += a0.1; s += a0.2; s += a0.3
        var total: Float = 0
        for j in (vectors * lanes)..<n { total += scalar(j) }
        for l in 0..<lanes { total += s[l] }
        return total
    }

    // MARK: 16-bit merge dtypes

    /// Σx accumulated in double, for a reduction over a 16-bit tensor: torch accumulates those in float32 and rounds
    /// once to the dtype, and the double sum rounded to the dtype (`TorchRounding.reduced`) agrees with it except within
    /// a float32 ulp of a rounding boundary of the dtype (none in the dtype fixtures).
    static func wideSum(_ x: UnsafeBufferPointer<Float>) -> Double {
        var s0 = 0.0, s1 = 0.0
        let n = x.count
        var j = 0
        while j + 1 < n { s0 += Double(x[j]); s1 += Double(x[j + 1]); j += 2 }
        if j < n { s0 += Double(x[j]) }
        return s0 + s1
    }

    /// Σx² accumulated in double (as `wideSum`).
    static func wideSumOfSquares(_ x: UnsafeBufferPointer<Float>) -> Double {
        var s0 = 0.0, s1 = 0.0
        let n = x.count
        var j = 0
        while j + 1 < n { let a = Double(x[j]), b = Double(x[j + 1]); s0 += a * a; s1 += b * b; j += 2 }
        if j < n { let a = Double(x[j]); s0 += a * a }
        return s0 + s1
    }

    /// Σxy accumulated in double (as `wideSum`).
    static func wideDot(_ x: UnsafeBufferPointer<Float>, _ y: UnsafeBufferPointer<Float>) -> Double {
        var s0 = 0.0, s1 = 0.0
        let n = min(x.count, y.count)
        var j = 0
        while j + 1 < n { s0 += Double(x[j]) * Double(y[j]); s1 += Double(x[j + 1]) * Double(y[j + 1]); j += 2 }
        if j < n { s0 += Double(x[j]) * Double(y[j]) }
        return s0 + s1
    }

    static func wideSum(_ x: [Float]) -> Double { x.withUnsafeBufferPointer { wideSum($0) } }
    static func wideNorm(_ x: [Float]) -> Double { x.withUnsafeBufferPointer { wideSumOfSquares($0) }.squareRoot() }
    static func wideDot(_ x: [Float], _ y: [Float]) -> Double {
        x.withUnsafeBufferPointer { a in y.withUnsafeBufferPointer { b in wideDot(a, b) } }
    }
}
