import Foundation

/// torch's float32 softmax over the last dimension, as its x86 CPU kernel computes it on an AVX-512 machine, replayed
/// because arcee_fusion's KL divergence depends on its rounding: a sum of p·log(p/q) with p ≈ q, in which float32
/// rounding of p and q leaves only a few significant bits, so an exact KL would move the gate of entries near the
/// threshold. ATen's `_vec_softmax_lastdim`: the row's max, SLEEF's expf_u10 of x − max, a 16-lane `reduce_all` sum,
/// times 1/sum (checked against torch 2.13 on thousands of rows). On a machine where torch runs its AVX2 softmax,
/// mergekit's own values round differently. The row sums of the KL itself are `TorchReductions.sum`.
public enum TorchSoftmax {
    /// Vector width of torch's softmax kernel (AVX-512).
    static let lanes = 16

    /// SLEEF's expf_u10 (`xexpf`), with fused multiply-adds as on AVX-512.
    @inline(__always)
    public static func exp(_ d: Float) -> Float {
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
        if n < lanes {
            guard n > 0 else { return 0 }
            var acc = x[0]
            for i in 1..<n { acc = acc + x[i] }
            return acc
        }
        let raw = UnsafeRawPointer(x)
        var acc = raw.loadUnaligned(as: SIMD16<Float>.self)
        var d = lanes
        while d + lanes <= n {
            acc = acc + raw.loadUnaligned(fromByteOffset: d * 4, as: SIMD16<Float>.self)
            d += lanes
        }
        for k in 0..<(n - d) { acc[k] = acc[k] + x[d + k] }
        // Lane 0 of the pairwise steps (k ^ 8, k ^ 4, k ^ 2, k ^ 1); float addition commutes, so halves suffice.
        let s8 = acc.lowHalf + acc.highHalf
        let s4 = s8.lowHalf + s8.highHalf
        let s2 = s4.lowHalf + s4.highHalf
        return s2[0] + s2[1]
    }

    /// The softmax of one row of `count` values into `out` (at least `count` long).
    public static func softmax(_ x: UnsafePointer<Float>, count n: Int, into out: UnsafeMutablePointer<Float>) {
        guard n > 0 else { return }
        var mx = x[0]
        for j in 1..<n { mx = max(mx, x[j]) }
        for j in 0..<n { out[j] = exp(x[j] - mx) }
        let r = 1 / reduceAllSum(out, count: n)
        for j in 0..<n { out[j] = out[j] * r }
    }
}
