import Foundation

/// The float32 arithmetic of torch's CPU kernels that some mergekit methods depend on, reproduced where their rounding
/// decides a result: arcee_fusion's KL divergence (a sum of p·log(p/q) with p ≈ q, in which float32 rounding of p and q
/// leaves only a few significant bits, so an exact KL would move the gate of entries near the threshold) and sce's
/// mean squares. Reproduced: `softmax` over the last dimension (ATen's `_vec_softmax_lastdim`:
/// max, SLEEF's expf_u10 of x − max, a lane-ordered sum, times 1/sum) and `sum` over a contiguous row (ATen's
/// cascade sum, `vectorized_inner_sum`/`row_sum`, as one thread runs it), as torch 2.13's x86 CPU kernels run on an
/// AVX-512 machine: softmax with 16 float32 lanes, the sum with 8 (torch dispatches its reductions to the AVX2
/// kernels). Each was checked against torch on thousands of rows (the sum on rows up to 20,000 entries; a single
/// row of more than 32,768 torch splits over threads). The logarithm is the correctly rounded one (torch's differs in
/// a few values in 10⁴ by one step, far below the cancellation). On a machine where torch runs other kernels (AVX2
/// softmax) mergekit's own sums round differently.
enum TorchFloat32 {
    /// Vector width of torch's softmax kernel (AVX-512).
    static let lanes = 16
    /// Vector width of torch's sum kernel (AVX2, also on AVX-512 machines).
    static let sumLanes = 8

    /// SLEEF's expf_u10 (`xexpf`), with fused multiply-adds as on AVX-512.
    @inline(__always)
    static func exp(_ d: Float) -> Float {
        if d.isNaN { return d }
        if d < -104 { return 0 }
        if d > 100 { return .infinity }
        let q = (d * Float(1.442695040888963407359924681001892137426645954152985934135449406931)).rounded(.toNearestOrEven)
        let qf = Float(Int32(q))
        var s = d.addingProduct(qf, -Float(0.693145751953125))
        s = s.addingProduct(qf, -Float(1.428606765330187045e-06))
        var u = Float(0.000198527617612853646278381)
        u = Float(0.00139304355252534151077271).addingProduct(u, s)
        u = Float(0.00833336077630519866943359).addingProduct(u, s)
        u = Float(0.0416664853692054748535156).addingProduct(u, s)
        u = Float(0.166666671633720397949219).addingProduct(u, s)
        u = Float(0.5).addingProduct(u, s)
        u = 1 + s.addingProduct(s * s, u)
        // vldexp2: scale by 2^(q/2) twice, as SLEEF does.
        let qi = Int(qf), half = qi >> 1
        return u * Float(sign: .plus, exponent: half, significand: 1) * Float(sign: .plus, exponent: qi - half, significand: 1)
    }

    /// ATen's `vec::reduce_all` with +: lane-wise over chunks of 16 (a partial last chunk into its first lanes), then
    /// the lanes pairwise (halves, quarters, ...); fewer than 16 values are summed in order.
    static func reduceAllSum(_ x: UnsafePointer<Float>, count n: Int) -> Float {
        let w = lanes
        if n < w {
            var acc = x[0]
            for i in 1..<max(1, n) { acc = acc + x[i] }
            return n == 0 ? 0 : acc
        }
        var acc = [Float](repeating: 0, count: w)
        for k in 0..<w { acc[k] = x[k] }
        var d = w
        while d < n - n % w {
            for k in 0..<w { acc[k] = acc[k] + x[d + k] }
            d += w
        }
        if n - d > 0 { for k in 0..<(n - d) { acc[k] = acc[k] + x[d + k] } }
        var step = w / 2
        while step >= 1 {
            let prev = acc
            for k in 0..<w { acc[k] = prev[k] + prev[k ^ step] }
            step /= 2
        }
        return acc[0]
    }

    /// softmax of one row, as `_vec_softmax_lastdim` computes it.
    static func softmax(_ x: UnsafePointer<Float>, count n: Int, into out: inout [Float]) {
        var mx = x[0]
        for j in 1..<max(1, n) { mx = max(mx, x[j]) }
        for j in 0..<n { out[j] = exp(x[j] - mx) }
        let sum = out.withUnsafeBufferPointer { reduceAllSum($0.baseAddress!, count: n) }
        let r = 1 / sum
        for j in 0..<n { out[j] = out[j] * r }
    }

    /// torch's sum of a contiguous row of float32 (SumKernel.cpp's cascade sum, as one thread runs it): rows of 8 or
    /// more are summed as 8-lane vectors (`vectorized_inner_sum`: the tail in order, then the lanes in order),
    /// shorter ones as scalars (`row_sum`).
    static func sum(_ x: UnsafePointer<Float>, count n: Int) -> Float {
        let w = sumLanes
        if n >= w {
            let vectors = n / w
            var partial = [Float](repeating: 0, count: w)
            partial.withUnsafeMutableBufferPointer { rowSum(x, lanes: w, count: vectors, into: $0.baseAddress!) }
            var total: Float = 0
            for k in (vectors * w)..<n { total += x[k] }
            for k in 0..<w { total += partial[k] }
            return total
        }
        var total: Float = 0
        rowSum(x, lanes: 1, count: n, into: &total)
        return total
    }

    /// torch's `torch.norm(x)` (2-norm) of a contiguous row of float32, as one thread runs it: squares accumulated in
    /// 8 lanes over whole vectors, the lanes summed in order, then the leftover entries' squares in order, and the
    /// correctly rounded square root (checked against torch on rows of 12 to 4,096 entries).
    static func norm(_ x: UnsafePointer<Float>, count n: Int) -> Float {
        let w = sumLanes
        let vectors = n / w
        var total: Float = 0
        if vectors > 0 {
            var acc = [Float](repeating: 0, count: w)
            for l in 0..<w { acc[l] = x[l] * x[l] }
            for i in 1..<vectors { for l in 0..<w { let v = x[i * w + l]; acc[l] += v * v } }
            total = acc[0]
            for l in 1..<w { total += acc[l] }
        }
        for j in (vectors * w)..<n { total += x[j] * x[j] }
        return total.squareRoot()
    }

    /// torch's `x.abs().sum()` of a whole tensor (as one thread runs it: torch splits a sum of more than 32,768
    /// entries over its threads, in an order that depends on their number).
    static func sumOfMagnitudes(_ x: UnsafeBufferPointer<Float>) -> Float {
        guard let p = x.baseAddress, !x.isEmpty else { return 0 }
        let magnitudes = UnsafeMutablePointer<Float>.allocate(capacity: x.count)
        defer { magnitudes.deallocate() }
        for j in 0..<x.count { magnitudes[j] = abs(p[j]) }
        return sum(magnitudes, count: x.count)
    }

    /// `row_sum` over `size` items of `lanes` floats each (item i at x + i·lanes): four interleaved accumulators
    /// (`multi_row_sum`), the leftover items into the first, then the four summed in order; lanes independent.
    static func rowSum(_ x: UnsafePointer<Float>, lanes: Int, count size: Int, into out: UnsafeMutablePointer<Float>) {
        let ilp = 4
        let sizeIlp = size / ilp
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: ilp * lanes)
        defer { partial.deallocate() }
        multiRowSum(x, rows: ilp, lanes: lanes, count: sizeIlp, into: partial)
        for i in (sizeIlp * ilp)..<size { for l in 0..<lanes { partial[l] += x[i * lanes + l] } }
        for k in 1..<ilp { for l in 0..<lanes { partial[l] += partial[k * lanes + l] } }
        for l in 0..<lanes { out[l] = partial[l] }
    }

    /// `multi_row_sum`: `rows` sums at once (item k of step i at x + (i·rows + k)·lanes) over `size` steps, cascaded
    /// over four levels of 2^levelPower steps; `out` gets rows × lanes sums.
    static func multiRowSum(_ x: UnsafePointer<Float>, rows: Int, lanes: Int, count size: Int, into out: UnsafeMutablePointer<Float>) {
        let levels = 4
        let ceilLog2 = size <= 2 ? 1 : (Int.bitWidth - (size - 1).leadingZeroBitCount)
        let levelPower = max(4, ceilLog2 / levels)
        let levelStep = 1 << levelPower, levelMask = levelStep - 1
        let width = rows * lanes
        let acc = UnsafeMutablePointer<Float>.allocate(capacity: levels * width)
        defer { acc.deallocate() }
        acc.initialize(repeating: 0, count: levels * width)
        var i = 0
        while i + levelStep <= size {
            for _ in 0..<levelStep {
                let item = x + i * width
                for e in 0..<width { acc[e] += item[e] }
                i += 1
            }
            for j in 1..<levels {
                let up = acc + j * width, down = acc + (j - 1) * width
                for e in 0..<width {
                    up[e] += down[e]
                    down[e] = 0
                }
                if i & (levelMask << (j * levelPower)) != 0 { break }
            }
        }
        while i < size {
            let item = x + i * width
            for e in 0..<width { acc[e] += item[e] }
            i += 1
        }
        for j in 1..<levels { for e in 0..<width { acc[e] += acc[j * width + e] } }
        for e in 0..<width { out[e] = acc[e] }
    }
}
