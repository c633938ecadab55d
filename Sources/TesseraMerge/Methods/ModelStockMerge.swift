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
/// Norms, dot products and the mean of the cosines are float32 sums in the order torch's CPU kernels add them on one
/// thread (`TorchReductions`), and the blend is the same float32 arithmetic, so float32 results are mergekit's bit for
/// bit (torch splits a whole-tensor sum of more than 32,768 entries over its threads, in an order that depends on
/// their number: there mergekit's own t varies in its last bit). These sums run on one core; the blend on all.
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

    /// Inputs are read as views (file mappings), not copied into arrays: reading four models' tensors into fresh
    /// memory cost about as much as the merge. The result goes to a fresh array.
    public static let readsViews = true

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        var base = try input.requireBase(Self.name)
        input.base = nil
        let idx = input.nonBaseIndices
        guard idx.count >= 2 else { throw Self.tooFewModels(idx.count, input.name) }
        let models = idx.map { input.models[$0] }
        input.models = []
        let n = base.count
        for (k, m) in models.enumerated() where m.count != n { throw Self.shapeMismatch(input.name, idx[k], m.count, n) }
        guard n > 0 else { return base }
        let filterWise = try input.parameters.bool("filter_wise")
        withReadOnlyPointers(models) { ws in
            base.withUnsafeMutableBufferPointer { bb in
                // In place: the base's storage is the output.
                Self.blend(into: bb.baseAddress!, base: UnsafePointer(bb.baseAddress!), ws, count: n, shape: input.shape,
                           filterWise: filterWise, TorchRounding(input.computeDType))
            }
        }
        return base
    }

    public func merge(views: TensorMergeViews) throws -> [Float] {
        guard let base = views.base else {
            throw TesseraError(.usage, "\(Self.name) needs a base model (tensor '\(views.name)')", hint: "set base_model in the merge config")
        }
        let idx = views.models.indices.filter { !(views.isBaseModel.indices.contains($0) && views.isBaseModel[$0]) }
        guard idx.count >= 2 else { throw Self.tooFewModels(idx.count, views.name) }
        let models = idx.map { views.models[$0] }
        let n = base.count
        for (k, m) in models.enumerated() where m.count != n { throw Self.shapeMismatch(views.name, idx[k], m.count, n) }
        guard n > 0 else { return Array(base) }
        let filterWise = try views.parameters.bool("filter_wise")
        let ws = models.map { $0.baseAddress! }
        return [Float](unsafeUninitializedCapacity: n) { out, initialized in
            // Views are float32 merges (the driver maps only those): no rounding.
            Self.blend(into: out.baseAddress!, base: base.baseAddress!, ws, count: n, shape: views.shape,
                       filterWise: filterWise, TorchRounding(.f32))
            initialized = n
        }
    }

    static func tooFewModels(_ count: Int, _ name: String) -> TesseraError {
        TesseraError(.usage, "model_stock: needs the base model and at least two other models; got \(count) besides the base (tensor '\(name)')",
                     hint: "list at least two fine-tunes of the base model")
    }

    static func shapeMismatch(_ name: String, _ model: Int, _ count: Int, _ n: Int) -> TesseraError {
        TesseraError(.shapeMismatch, "model_stock: tensor '\(name)' of model \(model) has \(count) values, the base has \(n)")
    }

    /// θ = t · (Σ_i w_i)/k + (1 − t) · w₀ into `out`, each row (or the whole tensor) with its own t. `base` may be `out`
    /// itself (each entry of w₀ is read before it is overwritten).
    static func blend(into out0: UnsafeMutablePointer<Float>, base w0p: UnsafePointer<Float>, _ ws0: [UnsafePointer<Float>],
                      count n: Int, shape: [Int], filterWise: Bool, _ r: TorchRounding) {
        let rowLength = filterWise ? (shape.last ?? n) : n
        let rows = rowLength == 0 ? 0 : n / rowLength
        let count = ws0.count
        let countF = Float(count)
        let out = SharedMutablePointer(out0)
        let w0 = SharedPointer(w0p)
        let inputs = UncheckedSendable(ws0)
        // Rows are independent: each finds its t, then blends (w₀ is read before it is overwritten when in place).
        // A single row (the whole tensor) blends over the cores.
        let work = { (row: Int, parallel: Bool) in
            let lo = row * rowLength
            let ws = inputs.value
            let t = Self.ratio(ws.map { $0 + lo }, w0.base + lo, count: rowLength, r)
            let s = r(1 - t)
            // In a 16-bit merge dtype mergekit's every op rounds to it (`TorchRounding`); in float32 `r` is the identity.
            let blend = { (range: Range<Int>) in
                if r.isIdentity {
                    Self.blendFloat32(into: out.base, base: w0.base, ws, range: range, t: t, s: s)
                    return
                }
                for j in range {
                    // sum(ws) / count: Python's sum, 0 + w₁ + w₂ + …, each addition a tensor op.
                    var sum: Float = 0
                    for a in 0..<count { sum = r(sum + ws[a][j]) }
                    out[j] = r(r(t * r(sum / countF)) + r(s * w0[j]))
                }
            }
            if parallel {
                Parallel.forChunks(rowLength) { _, r in blend((lo + r.lowerBound)..<(lo + r.upperBound)) }
            } else {
                blend(lo..<(lo + rowLength))
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

    /// The float32 blend, eight entries at a time: the same operations in the same order per entry as the scalar loop
    /// (0 + w₁ + w₂ + …, divided by k, then t·mean + s·w₀; no fused multiply-add), so the results are identical. The
    /// scalar loop's generic rounding kept each entry's sum on the stack: this loop runs at memory speed.
    static func blendFloat32(into out: UnsafeMutablePointer<Float>, base w0: UnsafePointer<Float>, _ ws: [UnsafePointer<Float>],
                             range: Range<Int>, t: Float, s: Float) {
        let countF = Float(ws.count)
        let count8 = SIMD8<Float>(repeating: countF), t8 = SIMD8<Float>(repeating: t), s8 = SIMD8<Float>(repeating: s)
        var j = range.lowerBound
        ws.withUnsafeBufferPointer { inputs in
            while j + 8 <= range.upperBound {
                var sum = SIMD8<Float>(repeating: 0)
                for w in inputs { sum += UnsafeRawPointer(w + j).loadUnaligned(as: SIMD8<Float>.self) }
                let base = UnsafeRawPointer(w0 + j).loadUnaligned(as: SIMD8<Float>.self)
                let blended = t8 * (sum / count8) + s8 * base
                UnsafeMutableRawPointer(out + j).storeBytes(of: blended, as: SIMD8<Float>.self)
                j += 8
            }
            while j < range.upperBound {
                var sum: Float = 0
                for w in inputs { sum += w[j] }
                out[j] = t * (sum / countF) + s * w0[j]
                j += 1
            }
        }
    }

    /// The interpolation ratio t of one row (or the whole tensor) of `n` entries, with float32 norms, dot products and
    /// means summed as torch sums them on one thread (`TorchReductions`): k·cos θ / (1 + (k − 1)·cos θ), 0 when singular.
    ///
    /// In a 16-bit merge dtype each elementwise op rounds to it, and the norms and sums (which torch accumulates in
    /// float32 and rounds once) are accumulated wide and rounded once (`roundedRatio`).
    static func ratio(_ ws: [UnsafePointer<Float>], _ w0: UnsafePointer<Float>, count n: Int,
                      _ r: TorchRounding) -> Float {
        let k = ws.count
        if !r.isIdentity { return roundedRatio(ws, w0, count: n, r) }
        // The k norms and k(k − 1)/2 dot products, each a torch-ordered sum on one core (computed from the inputs,
        // without difference tensors), side by side on the cores: they are independent.
        let pairs = (0..<k).flatMap { a in ((a + 1)..<k).map { (a, $0) } }
        let results = UnsafeMutablePointer<Float>.allocate(capacity: k + pairs.count)
        defer { results.deallocate() }
        let out = SharedMutablePointer(results), inputs = UncheckedSendable((ws, w0, pairs))
        let reduce = { @Sendable (i: Int) in
            let (ws, w0, pairs) = inputs.value
            out[i] = i < k ? TorchReductions.normOfDifference(ws[i], w0, count: n)
                : TorchReductions.sumOfDifferenceProducts(ws[pairs[i - k].0], ws[pairs[i - k].1], w0, count: n)
        }
        if n >= Parallel.minimumParallelCount {
            DispatchQueue.concurrentPerform(iterations: k + pairs.count, execute: reduce)
        } else {
            for i in 0..<(k + pairs.count) { reduce(i) }
        }
        let cosines = pairs.enumerated().map { (p, pair) in
            min(max(results[k + p] / max(results[pair.0] * results[pair.1], Float(1e-6)), -1), 1)
        }
        let cos = TorchReductions.sum(cosines) / Float(cosines.count)
        let kf = Float(k)
        let denominator = 1 + (kf - 1) * cos
        return abs(denominator) < Float(1e-6) ? 0 : (kf * cos) / denominator
    }

    /// `ratio` in a 16-bit merge dtype, op by op.
    static func roundedRatio(_ ws: [UnsafePointer<Float>], _ w0: UnsafePointer<Float>, count n: Int, _ r: TorchRounding) -> Float {
        let k = ws.count
        let offsets = ws.map { w in (0..<n).map { j in r(w[j] - w0[j]) } }
        let norms = offsets.map { r.reduced(TorchReductions.wideNorm($0)) }
        var cosines: [Float] = []
        let floor = Float(1e-6)
        for a in 0..<k {
            for c in (a + 1)..<k {
                let products = (0..<n).map { j in r(offsets[a][j] * offsets[c][j]) }
                let dot = r.reduced(TorchReductions.wideSum(products))
                cosines.append(min(max(r(dot / r(max(r(norms[a] * norms[c]), floor))), -1), 1))
            }
        }
        // mean over the stacked cosines: torch's CPU mean of a 16-bit tensor sums and divides in float32, then rounds.
        let cos = r(Float(TorchReductions.wideSum(cosines)) / Float(cosines.count))
        let kf = Float(k)
        let denominator = r(1 + r((kf - 1) * cos))
        // A comparison converts its scalar to the tensor's dtype.
        return abs(denominator) < r(1e-6) ? 0 : r(r(kf * cos) / denominator)
    }
}
