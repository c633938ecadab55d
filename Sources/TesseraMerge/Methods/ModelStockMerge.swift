import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// `model_stock` (Jang, Yun & Han 2024, "Model Stock"), per tensor as mergekit 0.1.5 computes it, from the base w₀
/// and the k ≥ 2 other models w_1…w_k:
///
///     cos θ = mean over pairs i < j of clamp(⟨w_i − w₀, w_j − w₀⟩ / max(‖w_i − w₀‖·‖w_j − w₀‖, 1e-6), −1, 1)
///     t     = k·cos θ / (1 + (k − 1)·cos θ)        (t = 0 when |1 + (k − 1)·cos θ| < 1e-6: the base is kept)
///     θ     = t · (Σ_i w_i)/k + (1 − t) · w₀
///
/// over the whole tensor, or with filter_wise: true over each row along the last dimension (each row its own t; a
/// 1-D tensor is one row). mergekit needs three inputs: the base and at least two others (the base may be listed
/// among the models; it is not counted twice). Model weights play no part (a `weight` is accepted and ignored).
/// Norms and dot products are summed in double and rounded to float32 where mergekit's float32 tensors are, so t
/// agrees with mergekit's to float32 rounding; the final blend is the same float32 arithmetic.
public struct ModelStockMerge: MergeMethod {
    public static let name = "model_stock"
    public static let summary = "interpolate the models' average toward the base by their task vectors' angle"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        .bool("filter_wise", false, help: "one interpolation ratio per row (last dimension) instead of per tensor"),
    ]
    public static let modelParameters: [ParameterDefinition] = [
        .number("weight", 1, help: "accepted and ignored (model_stock does not weight models)"),
    ]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        var base = try input.requireBase(Self.name)
        input.base = nil
        let idx = input.nonBaseIndices
        guard idx.count >= 2 else {
            throw TesseraError(.usage, "model_stock: needs the base model and at least two other models; got \(idx.count) besides the base (tensor '\(input.name)')",
                               hint: "list at least two fine-tunes of the base model")
        }
        let models = idx.map { input.models[$0] }
        input.models = []
        let n = base.count
        for (k, m) in models.enumerated() where m.count != n {
            throw TesseraError(.shapeMismatch, "model_stock: tensor '\(input.name)' of model \(idx[k]) has \(m.count) values, the base has \(n)")
        }
        guard n > 0 else { return base }
        let filterWise = try input.parameters.bool("filter_wise")
        let rowLength = filterWise ? (input.shape.last ?? n) : n
        let rows = rowLength == 0 ? 0 : n / rowLength
        let count = models.count
        let pairs = count * (count - 1) / 2
        let countF = Float(count)
        withReadOnlyPointers(models) { ws in
            base.withUnsafeMutableBufferPointer { bb in
                guard let w0 = bb.baseAddress else { return }
                let out = SharedMutablePointer(w0)
                let inputs = UncheckedSendable(ws)
                // Rows are independent: each finds its t, then blends in place (w₀ is read before it is overwritten).
                // A single row (the whole tensor) spreads its sums and its blend over the cores.
                let work = { (row: Int, parallel: Bool) in
                    let lo = row * rowLength, hi = lo + rowLength
                    let ws = inputs.value
                    let dots = Self.gram(ws, UnsafePointer(out.base), lo, hi, parallel: parallel)
                    // Σ of the pairs' cosines in float32, in mergekit's pair order, then their mean.
                    var cosSum: Float = 0
                    for a in 0..<count {
                        let na = Float(dots[a * count + a].squareRoot())
                        for c in (a + 1)..<count {
                            let nc = Float(dots[c * count + c].squareRoot())
                            let product = max(na * nc, Float(1e-6))
                            cosSum += min(max(Float(dots[a * count + c]) / product, -1), 1)
                        }
                    }
                    let cos = cosSum / Float(pairs)
                    let denominator = 1 + (countF - 1) * cos
                    let t: Float = abs(denominator) < Float(1e-6) ? 0 : (countF * cos) / denominator
                    let s = 1 - t
                    let blend = { (r: Range<Int>) in
                        for j in r {
                            var sum: Float = 0
                            for a in 0..<count { sum += ws[a][j] }
                            out[j] = t * (sum / countF) + s * out[j]
                        }
                    }
                    if parallel {
                        Parallel.forChunks(hi - lo) { _, r in blend((lo + r.lowerBound)..<(lo + r.upperBound)) }
                    } else {
                        blend(lo..<hi)
                    }
                }
                if rows == 1 {
                    work(0, true)
                } else {
                    let chunks = n >= Parallel.minimumParallelCount ? min(rows, Parallel.chunksPerCore * 2) : 1
                    Parallel.forEach(chunks) { c in
                        for row in (rows * c / chunks)..<(rows * (c + 1) / chunks) { work(row, false) }
                    }
                }
            }
        }
        return base
    }

    /// The task vectors' Gram matrix over entries lo..<hi: entry [a·k + c] (a ≤ c) is Σ_j o_a[j]·o_c[j] with
    /// o_i = w_i − w₀ (each difference in float32, as mergekit's offsets are), summed in double. In parallel, blocks
    /// of 65,536 entries are summed separately and combined in block order, so the result is the same whatever the
    /// number of threads.
    static func gram(_ ws: [UnsafePointer<Float>], _ w0: UnsafePointer<Float>, _ lo: Int, _ hi: Int, parallel: Bool) -> [Double] {
        let k = ws.count
        let block = 1 << 16
        let blocks = parallel ? max(1, (hi - lo + block - 1) / block) : 1
        var partial = [Double](repeating: 0, count: blocks * k * k)
        partial.withUnsafeMutableBufferPointer { pb in
            let p = SharedMutablePointer(pb.baseAddress!)
            let inputs = UncheckedSendable(ws), base = SharedPointer(w0)
            let sum = { (b: Int) in
                let start = blocks == 1 ? lo : lo + b * block, end = blocks == 1 ? hi : min(hi, start + block)
                let ws = inputs.value
                var acc = [Double](repeating: 0, count: k * k)
                for j in start..<end {
                    let w = base[j]
                    for a in 0..<k {
                        let oa = Double(ws[a][j] - w)
                        for c in a..<k { acc[a * k + c] += oa * Double(ws[c][j] - w) }
                    }
                }
                for i in 0..<(k * k) { p[b * k * k + i] = acc[i] }
            }
            if blocks == 1 { sum(0) } else { Parallel.forEach(blocks) { sum($0) } }
        }
        var total = [Double](repeating: 0, count: k * k)
        for b in 0..<blocks { for i in 0..<(k * k) { total[i] += partial[b * k * k + i] } }
        return total
    }
}
