/// torch's float32 CPU reductions, replayed so that methods whose results depend on a whole-tensor sum or norm
/// (slerp, nuslerp, multislerp) can give mergekit's float32 values bit for bit.
///
/// Found by replaying candidate orders against torch 2.13 (x86-64) on random tensors:
/// - `sum` over a contiguous run of n ≥ 8 floats (torch's `cascade_sum`, `vectorized_inner_sum`): 8-lane vectors,
///   grouped 4 at a time into a multi-level cascade (level width 2^max(4, ⌈log₂ groups⌉/4), four levels) whose four
///   partial vectors are added in order; then the scalar tail from 0, then the 8 lanes in order. Below 8 floats the
///   same cascade runs on scalars, four at a time.
/// - `vector_norm` (p = 2) over a contiguous run: 8-lane accumulators of x·x (multiply, then add), the lanes added in
///   order, the tail added with a fused multiply-add, then the square root. For runs shorter than 8 floats torch
///   takes another path, which this replays only approximately.
/// - A full reduction of more than 32,768 elements is split over torch's threads (`parallel_reduce`), so mergekit's
///   own float32 result then depends on its thread count; the serial order here matches a one-thread run.
enum TorchReductions {
    static let lanes = 8
    static let ilp = 4

    /// `x.sum()` of n contiguous floats.
    static func sum(_ x: UnsafeBufferPointer<Float>) -> Float {
        let n = x.count
        guard let p = x.baseAddress else { return 0 }
        if n < lanes {
            // scalar_inner_sum: row_sum on scalars, ilp 4.
            return rowSum(width: 1, count: n) { i, _ in p[i] }
        }
        // row_sum over 8-lane vectors: multi_row_sum over rows of 4 vectors, leftover vectors into partial 0, the
        // partials added in order; then the scalar tail from 0, then the lanes in order.
        let vectors = n / lanes, rows = vectors / ilp
        let raw = UnsafeRawPointer(p)
        @inline(__always) func load(_ v: Int) -> SIMD8<Float> { raw.loadUnaligned(fromByteOffset: v * 32, as: SIMD8<Float>.self) }
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
        for j in (vectors * lanes)..<n { total += p[j] }
        for l in 0..<lanes { total += s[l] }
        return total
    }

    /// `row_sum` on scalars (ilp 4): four partial sums over rows of four, leftovers into partial 0, then added.
    static func rowSum(width: Int, count n: Int, _ load: (Int, Int) -> Float) -> Float {
        let rows = n / ilp
        var partials = multiRowSum(rows: rows, columns: ilp) { row, column in load(row * ilp + column, 0) }
        for i in (rows * ilp)..<n { partials[0] += load(i, 0) }
        for k in 1..<ilp { partials[0] += partials[k] }
        return partials[0]
    }

    /// torch's `multi_row_sum`: `columns` running sums over `rows` rows, cascaded through four levels.
    static func multiRowSum(rows size: Int, columns: Int, _ load: (Int, Int) -> Float) -> [Float] {
        let levels = 4
        var ceilLog2 = 0
        while (1 << ceilLog2) < size { ceilLog2 += 1 }
        let power = max(4, ceilLog2 / levels)
        let step = 1 << power, mask = step - 1
        var acc = [[Float]](repeating: [Float](repeating: 0, count: columns), count: levels)
        var i = 0
        while i + step <= size {
            for _ in 0..<step {
                for c in 0..<columns { acc[0][c] += load(i, c) }
                i += 1
            }
            for j in 1..<levels {
                for c in 0..<columns { acc[j][c] += acc[j - 1][c]; acc[j - 1][c] = 0 }
                if i & (mask << (j * power)) != 0 { break }
            }
        }
        while i < size {
            for c in 0..<columns { acc[0][c] += load(i, c) }
            i += 1
        }
        for j in 1..<levels { for c in 0..<columns { acc[0][c] += acc[j][c] } }
        return acc[0]
    }

    /// `torch.linalg.vector_norm(x)` of n contiguous floats.
    static func norm(_ x: UnsafeBufferPointer<Float>) -> Float {
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
        while d < n { total = total.addingProduct(p[d], p[d]); d += 1 }
        return total.squareRoot()
    }

    static func sum(_ x: [Float]) -> Float { x.withUnsafeBufferPointer { sum($0) } }
    static func norm(_ x: [Float]) -> Float { x.withUnsafeBufferPointer { norm($0) } }
}
