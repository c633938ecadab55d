import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// `arcee_fusion` (Arcee's dynamic-threshold fusion) as mergekit 0.1.5 computes it, from the base b and the one
/// other model p:
///
///     importance = |p − b| · KL_row,   KL_row = Σ_row P·log(P/Q) along the last dimension,
///                  P = softmax(p) + 1e-8, Q = softmax(b) + 1e-8 (per row; a 1-D tensor is one row)
///     threshold  = median + 1.5·(q3 − q1) of the importances (quantiles at index ⌊q·(n − 1)⌋ of the sorted values)
///     θ = b + (p − b)·[importance ≥ threshold]
///
/// so only the entries whose change stands out (an upper-outlier fence, Tukey's 1.5 IQR) are taken from p. Subtleties:
/// when most entries are unchanged the quartiles are 0, the threshold is 0 and every entry is taken from p (as
/// b + (p − b), which may differ from p in the last bit). The KL of two nearby softmaxes cancels to a few significant
/// bits in mergekit's float32, and that rounding decides the gate of entries near the threshold, so the softmax and
/// the row sums are computed as torch's float32 CPU kernels compute them (`TorchFloat32`): float32 results agree with
/// mergekit's bit for bit. mergekit estimates the quantiles of a tensor of more than 1,000,000 entries from 1,000,000
/// entries drawn with torch's generator; Tessera uses the exact quantiles of every entry (deterministic, and what
/// mergekit computes for smaller tensors), so on such tensors the gate can differ from any one mergekit run near
/// the threshold. mergekit's result is float32 whatever the inputs' dtype (its mask is float32), and it writes it so.
/// No parameters; the base and exactly one other model.
public struct ArceeFusionMerge: MergeMethod {
    public static let name = "arcee_fusion"
    public static let summary = "take the other model's changes whose importance (|Δ|·KL) passes a dynamic IQR threshold"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = []
    public static let modelParameters: [ParameterDefinition] = [
        .number("weight", 1, help: "accepted and ignored (arcee_fusion does not weight models)"),
    ]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        var base = try input.requireBase(Self.name)
        input.base = nil
        let others = input.nonBaseIndices
        guard others.count == 1 else {
            throw TesseraError(.usage, "arcee_fusion: needs exactly two models, the base and one other; got \(others.count) besides the base (tensor '\(input.name)')",
                               hint: "list the base model and one other model")
        }
        let p = input.models[others[0]]
        input.models = []
        let n = base.count
        guard p.count == n else {
            throw TesseraError(.shapeMismatch, "arcee_fusion: tensor '\(input.name)' has \(p.count) values in the model, \(n) in the base")
        }
        guard n > 0 else { return base }
        let rowLength = max(1, input.shape.last ?? n)
        let rows = n / rowLength
        // Importance, in float32: |p − b| times the row's KL divergence, computed as torch computes it (`TorchFloat32`).
        var importance = [Float](repeating: 0, count: n)
        importance.withUnsafeMutableBufferPointer { ib in
            let out = SharedMutablePointer(ib.baseAddress!)
            p.withUnsafeBufferPointer { pb in
                base.withUnsafeBufferPointer { bb in
                    let pp = SharedPointer(pb.baseAddress!), bp = SharedPointer(bb.baseAddress!)
                    let chunks = n >= Parallel.minimumParallelCount ? min(rows, Parallel.chunksPerCore * 2) : 1
                    Parallel.forEach(chunks) { c in
                        var sp = [Float](repeating: 0, count: rowLength), sq = sp, terms = sp
                        for row in (rows * c / chunks)..<(rows * (c + 1) / chunks) {
                            let lo = row * rowLength
                            TorchFloat32.softmax(pp.base + lo, count: rowLength, into: &sp)
                            TorchFloat32.softmax(bp.base + lo, count: rowLength, into: &sq)
                            let eps = Float(1e-8)
                            for j in 0..<rowLength {
                                let a = sp[j] + eps, b = sq[j] + eps
                                terms[j] = a * Float(log(Double(a / b)))
                            }
                            let kl = terms.withUnsafeBufferPointer { TorchFloat32.sum($0.baseAddress!, count: rowLength) }
                            for j in 0..<rowLength { out[lo + j] = abs(pp[lo + j] - bp[lo + j]) * kl }
                        }
                    }
                }
            }
        }
        let threshold = Self.threshold(importance)
        // b + (p − b)·mask for every entry, as mergekit writes it (a −0 base entry left by the gate becomes +0 when
        // (p − b)·0 is +0, so the gated entries are not simply b).
        for j in 0..<n {
            let mask: Float = importance[j] >= threshold ? 1 : 0
            base[j] = base[j] + (p[j] - base[j]) * mask
        }
        return base
    }

    /// median + 1.5·(q3 − q1), the quantiles at sorted index ⌊q·(n − 1)⌋, in float32.
    static func threshold(_ importance: [Float]) -> Float {
        let n = importance.count
        let positions = [(n - 1) / 4, (n - 1) / 2, 3 * (n - 1) / 4]
        var q: [Float]
        if importance.allSatisfy({ $0 >= 0 }) {
            // Non-negative (the usual case: KL ≥ 0): order statistics of the magnitudes, no sort, no copy.
            q = importance.withUnsafeBufferPointer { ib in
                positions.map { Float(bitPattern: MagnitudeSelect.threshold(ib, rank: $0, descending: false).value) }
            }
        } else {
            let sorted = importance.sorted()
            q = positions.map { sorted[$0] }
        }
        return q[1] + Float(1.5) * (q[2] - q[0])
    }
}

/// The float32 arithmetic of torch's CPU kernels that arcee_fusion's KL divergence goes through, reproduced so that
/// the importance scores round as mergekit's do: the KL of two nearby softmaxes is a sum of p·log(p/q) with p ≈ q, in
/// which float32 rounding of p and q leaves only a few significant bits, so an exact (double) KL would move the gate
/// of entries near the threshold. Reproduced: `softmax` over the last dimension (ATen's `_vec_softmax_lastdim`:
/// max, SLEEF's expf_u10 of x − max, a lane-ordered sum, times 1/sum) and `sum` over a contiguous row (ATen's
/// cascade sum, `vectorized_inner_sum`/`row_sum`), with torch 2.13's AVX-512 vector width (16 float32 lanes), the
/// kernels the fixtures' mergekit ran. The logarithm is the correctly rounded one (torch's differs in a few values
/// in 10⁴ by one step, far below the cancellation). On a machine where torch runs 8-lane AVX2 kernels mergekit's own
/// sums round differently.
enum TorchFloat32 {
    static let lanes = 16

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

    /// torch's sum of a contiguous row of float32 (SumKernel.cpp's cascade sum): rows of 16 or more are summed as
    /// 16-lane vectors (`vectorized_inner_sum`: the tail in order, then the lanes in order), shorter ones as scalars
    /// (`row_sum`).
    static func sum(_ x: UnsafePointer<Float>, count n: Int) -> Float {
        let w = lanes
        if n >= w {
            let vectors = n / w
            let partial = rowSum(lanes: w, count: vectors) { i, lane in x[i * w + lane] }
            var total: Float = 0
            for k in (vectors * w)..<n { total += x[k] }
            for k in 0..<w { total += partial[k] }
            return total
        }
        return rowSum(lanes: 1, count: n) { i, _ in x[i] }[0]
    }

    /// `row_sum`: four interleaved accumulators (`multi_row_sum`), the leftover items into the first, then the four
    /// summed in order. Each item has `lanes` lanes, accumulated independently.
    static func rowSum(lanes: Int, count size: Int, _ load: (Int, Int) -> Float) -> [Float] {
        let ilp = 4
        let sizeIlp = size / ilp
        var partial = multiRowSum(rows: ilp, lanes: lanes, count: sizeIlp) { i, k, lane in load(i * ilp + k, lane) }
        for i in (sizeIlp * ilp)..<size { for l in 0..<lanes { partial[0][l] += load(i, l) } }
        for k in 1..<ilp { for l in 0..<lanes { partial[0][l] += partial[k][l] } }
        return partial[0]
    }

    /// `multi_row_sum`: `rows` sums at once over `count` steps, cascaded over four levels of 2^levelPower steps.
    static func multiRowSum(rows: Int, lanes: Int, count size: Int, _ load: (Int, Int, Int) -> Float) -> [[Float]] {
        let levels = 4
        let ceilLog2 = size <= 2 ? 1 : (Int.bitWidth - (size - 1).leadingZeroBitCount)
        let levelPower = max(4, ceilLog2 / levels)
        let levelStep = 1 << levelPower, levelMask = levelStep - 1
        var acc = [[[Float]]](repeating: [[Float]](repeating: [Float](repeating: 0, count: lanes), count: rows), count: levels)
        var i = 0
        while i + levelStep <= size {
            for _ in 0..<levelStep {
                for k in 0..<rows { for l in 0..<lanes { acc[0][k][l] += load(i, k, l) } }
                i += 1
            }
            for j in 1..<levels {
                for k in 0..<rows {
                    for l in 0..<lanes {
                        acc[j][k][l] += acc[j - 1][k][l]
                        acc[j - 1][k][l] = 0
                    }
                }
                if i & (levelMask << (j * levelPower)) != 0 { break }
            }
        }
        while i < size {
            for k in 0..<rows { for l in 0..<lanes { acc[0][k][l] += load(i, k, l) } }
            i += 1
        }
        for j in 1..<levels { for k in 0..<rows { for l in 0..<lanes { acc[0][k][l] += acc[j][k][l] } } }
        return acc[0]
    }
}
