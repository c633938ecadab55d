import TesseraCore
import TesseraIO
import TesseraMath

/// `sce` (Wan et al. 2024, FuseChat: Select, Calculate, Erase), per tensor as mergekit 0.1.5 computes it, on the task
/// vectors τ_i = θ_i − θ_base of the models other than the base:
///
///     Select (select_topk < 1): keep the entries with the largest variance across the τ_i (population variance),
///         k = ⌊nonzero · select_topk⌋ of them (nonzero: entries whose variance is not zero; the product is taken in
///         float32, as torch does), the same entries in every τ_i; the others become 0 (select_topk ≤ 0 keeps none)
///     Calculate: w_i = mean(τ_i²) / Σ_j mean(τ_j²) over the selected τ; if Σ_j mean(τ_j²) < 1e-6, w_i = 1/m
///     Erase: elect a sign per entry by Σ_i τ_i (≥ 0 elects +), keep only the τ_i entries of that sign (zeros never)
///     θ = θ_base + Σ_i w_i τ_i / max(Σ_i w_i [τ_i kept], 1e-6)
///
/// Models carry no weights (a `weight` is accepted and ignored). Subtleties: the 1e-6 floor on the summed mean
/// squares makes small task vectors (|τ| ≲ 1e-3) fall back to equal weights; with one model and select_topk < 1 the
/// variance is zero everywhere, nothing is selected and the result is the base. Of the entries tied in variance at
/// the cut (many in float16 and bfloat16), those torch's CPU topk returns are kept (`TorchTopK`). The mean squares are summed as torch sums
/// them (`TorchReductions`), so float32 results agree with mergekit's bit for bit (with one model the weight is 1 however
/// it is summed).
public struct SceMerge: MergeMethod {
    public static let name = "sce"
    public static let summary = "select high-variance entries, weight by mean square, erase minority signs (FuseChat)"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        .number("select_topk", 1, help: "fraction of the entries with the largest variance across models kept, in [0, 1]"),
        CommonParameters.int8Mask,
    ]
    public static let modelParameters: [ParameterDefinition] = [
        .number("weight", 1, help: "accepted and ignored (sce weights models by their task vectors' mean square)"),
    ]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        var base = try input.requireBase(Self.name)
        input.base = nil
        let idx = input.nonBaseIndices
        if idx.isEmpty { return base }
        let n = base.count
        let topk = try input.parameters.double("select_topk")
        guard !topk.isNaN else {
            throw TesseraError(.invalidParameter, "sce: select_topk is NaN", hint: "use a fraction in [0, 1], e.g. select_topk: 0.1")
        }
        // Task vectors, in place of the models.
        var tvs: [[Float]] = []
        for i in idx { tvs.append(try input.takeTaskVector(i, base: base, method: Self.name)) }
        let rounding = TorchRounding(input.computeDType)
        if !rounding.isIdentity {
            for i in tvs.indices { rounding.round(&tvs[i]) }
            return Self.mergeRounded(base, &tvs, topk: topk, rounding)
        }
        let m = tvs.count
        if topk < 1 { Self.select(&tvs, fraction: topk) }
        // Calculate: mean squares as torch computes them (float32 squares, its cascade sum of each model's row, / n;
        // torch sums each row on one thread when there are two or more models), and their float32 sum.
        var meanSquares = [Float](repeating: 0, count: m)
        var squares = [Float](repeating: 0, count: n)
        for i in 0..<m {
            tvs[i].withUnsafeBufferPointer { t in
                squares.withUnsafeMutableBufferPointer { sq in
                    guard let tp = t.baseAddress, let sp = sq.baseAddress else { return }
                    let src = SharedPointer(tp), dst = SharedMutablePointer(sp)
                    Parallel.forChunks(n) { _, r in for j in r { dst[j] = src[j] * src[j] } }
                    meanSquares[i] = TorchReductions.sum(UnsafeBufferPointer(start: sp, count: n)) / Float(n)
                }
            }
            if n == 0 { meanSquares[i] = .nan }
        }
        squares = []
        let total = TorchReductions.sum(meanSquares)
        var weights = [Float](repeating: 1 / Float(m), count: m)
        if !(abs(Double(total)) < 1e-6) {  // mergekit compares the float32 sum, as a Python float, with 1e-6
            for i in 0..<m { weights[i] = meanSquares[i] / total }
        }
        // Erase and merge, element by element, summing over models in order.
        let w = weights
        withBufferPointers(&tvs) { t in
            base.withUnsafeMutableBufferPointer { bb in
                guard let bp = bb.baseAddress else { return }
                let out = SharedMutablePointer(bp)
                let tp = UncheckedSendable(t)
                Parallel.forChunks(n) { _, r in
                    let t = tp.value
                    for j in r {
                        var vote: Float = 0
                        for i in 0..<m { vote += t[i][j] }
                        let positive = vote >= 0
                        var mixed: Float = 0, kept: Float = 0
                        for i in 0..<m {
                            let v = t[i][j]
                            let ew: Float = (positive ? v > 0 : v < 0) ? w[i] : 0
                            mixed += v * ew
                            kept += ew
                        }
                        out[j] = out[j] + mixed / max(kept, Float(1e-6))
                    }
                }
            }
        }
        return base
    }

    /// Select: zero, in every task vector, the entries outside the k of largest population variance across them.
    /// `rounding`: the variance as torch returns it in a 16-bit merge dtype (computed wider, rounded once).
    static func select(_ tvs: inout [[Float]], fraction: Double, rounding: TorchRounding = TorchRounding(.f32)) {
        let m = tvs.count, n = tvs.first?.count ?? 0
        if fraction <= 0 {
            for i in 0..<m { tvs[i] = [Float](repeating: 0, count: n) }
            return
        }
        var variance = [Float](repeating: 0, count: n)
        var nonzero = 0
        for j in 0..<n {
            var mean = 0.0
            for i in 0..<m { mean += Double(tvs[i][j]) }
            mean /= Double(m)
            var s = 0.0
            for i in 0..<m { let d = Double(tvs[i][j]) - mean; s += d * d }
            variance[j] = rounding(Float(s / Double(m)))
            if variance[j] != 0 { nonzero += 1 }
        }
        // torch: int(count_nonzero * density), the product in float32.
        let k = Int(Float(nonzero) * Float(fraction))
        if k == 0 {
            for i in 0..<m { tvs[i] = [Float](repeating: 0, count: n) }
            return
        }
        // The k largest variances (all non-zero, as k ≤ nonzero), ties at the cut kept as torch.topk keeps them.
        variance.withUnsafeMutableBufferPointer { TorchTopK.keepLargest($0, k: k) }
        for i in 0..<m {
            for j in 0..<n where variance[j] == 0 { tvs[i][j] = 0 }
        }
    }

    /// sce in a 16-bit merge dtype, op by op as mergekit's torch code runs there (the task vectors already rounded):
    /// the squares rounded, each model's mean square as torch's CPU mean of a 16-bit tensor gives it (a float32 sum of
    /// the values, divided, rounded once), their sum rounded, the weights w / Σ rounded; then per entry the sign vote
    /// (a sum rounded to the dtype, which can round a tiny sum to zero), the products τ·w rounded and summed over the
    /// models in float32 as torch's reduction does, the kept weights' sum likewise, and the quotient and the final
    /// addition rounded.
    static func mergeRounded(_ base: [Float], _ tvs: inout [[Float]], topk: Double, _ r: TorchRounding) -> [Float] {
        var base = base
        let m = tvs.count, n = base.count
        if topk < 1 {
            // The variance (computed in float32 by torch, then rounded) decides the selection.
            Self.select(&tvs, fraction: topk, rounding: r)
        }
        var meanSquares = [Float](repeating: 0, count: m)
        for i in 0..<m {
            let squares = tvs[i].map { r($0 * $0) }
            meanSquares[i] = n == 0 ? .nan : r(TorchReductions.sum(squares) / Float(n))
        }
        let total = r(TorchReductions.sum(meanSquares))
        var weights = [Float](repeating: r(1 / Float(m)), count: m)
        if !(abs(Double(total)) < 1e-6) {
            for i in 0..<m { weights[i] = r(meanSquares[i] / total) }
        }
        let w = weights
        withBufferPointers(&tvs) { t in
            base.withUnsafeMutableBufferPointer { bb in
                guard let bp = bb.baseAddress else { return }
                let out = SharedMutablePointer(bp)
                let tp = UncheckedSendable(t)
                Parallel.forChunks(n) { _, range in
                    let t = tp.value
                    for j in range {
                        var vote: Float = 0
                        for i in 0..<m { vote += t[i][j] }
                        let positive = r(vote) >= 0
                        var mixed: Float = 0, kept: Float = 0
                        for i in 0..<m {
                            let v = t[i][j]
                            // sign(τ) == majority sign (±1): a zero entry is erased.
                            let ew: Float = (positive ? v > 0 : v < 0) ? w[i] : 0
                            mixed += r(v * ew)
                            kept += ew
                        }
                        out[j] = r(out[j] + r(r(mixed) / r(max(r(kept), Float(1e-6)))))
                    }
                }
            }
        }
        return base
    }
}
