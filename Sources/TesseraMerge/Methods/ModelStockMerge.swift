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
                let work = { (row: Int) in
                    let lo = row * rowLength, hi = lo + rowLength
                    let ws = inputs.value
                    var dots = [Double](repeating: 0, count: count * count)
                    for j in lo..<hi {
                        let b = out[j]
                        for a in 0..<count {
                            let oa = Double(ws[a][j] - b)
                            for c in a..<count { dots[a * count + c] += oa * Double(ws[c][j] - b) }
                        }
                    }
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
                    for j in lo..<hi {
                        var sum: Float = 0
                        for a in 0..<count { sum += ws[a][j] }
                        out[j] = t * (sum / countF) + s * out[j]
                    }
                }
                if rows == 1 {
                    work(0)
                } else {
                    let chunks = n >= Parallel.minimumParallelCount ? min(rows, Parallel.chunksPerCore * 2) : 1
                    Parallel.forEach(chunks) { c in
                        for row in (rows * c / chunks)..<(rows * (c + 1) / chunks) { work(row) }
                    }
                }
            }
        }
        return base
    }
}
