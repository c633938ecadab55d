import Foundation
import TesseraCore
import TesseraIO

/// `multislerp` (mergekit's "Multi-SLERP"): barycentric interpolation of any number of models on a hypersphere. With
/// a base model the points are the task vectors θ_i − θ_base and the result is added back to the base.
///
/// Per tensor (flattened): each point's norm ‖v_i‖ and unit vector u_i = v_i / (‖v_i‖ + eps); the weighted mean
/// m = Σ w_i u_i (weights divided by their sum when `normalize_weights`, the default) projected to the sphere; the
/// points' tangents u_i − (u_i·m̂) m̂ averaged with the weights into τ; back to the sphere by the exponential map
/// m̂ cos‖τ‖ + τ sin‖τ‖/‖τ‖ (‖τ‖ + eps as mergekit takes it); scaled by the weighted mean norm Σ w_i ‖v_i‖.
/// A single model is returned as it is (the base is then not used). When ‖m‖ < eps the points cancel: two models
/// fall back to w₀v₀ + w₁v₁ (+ base), more are an error, as in mergekit.
///
/// Every op follows mergekit's torch code, rounded to the compute dtype where torch's result has it
/// (`TorchRounding`; torch rounds a scalar added to a 16-bit tensor to its dtype first, so eps vanishes in float16).
public struct MultiSlerpMerge: MergeMethod {
    public static let name = "multislerp"
    public static let summary = "barycentric interpolation of any number of models on the hypersphere"
    public static let baseUse = BaseUse.optional
    public static let globalParameters: [ParameterDefinition] = [
        .bool("normalize_weights", true, help: "divide the weights by their sum"),
        .number("eps", 1e-8, help: "added to norms before dividing by them"),
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let indices = input.nonBaseIndices
        guard !indices.isEmpty else {
            throw TesseraError(.usage, "multislerp: needs at least one model besides the base (tensor '\(input.name)')", hint: "list the models to merge")
        }
        if indices.count == 1 { return input.models[indices[0]] }
        let r = TorchRounding(input.computeDType)
        let normalizeWeights = try input.parameters.bool("normalize_weights")
        let eps = try input.parameters.double("eps")
        let addedEps = r(Float(eps))
        var weights = try indices.map { r(Float(try input.modelParameters[$0].double("weight"))) }
        // Whole-tensor sums and norms: torch's float32 order in float32 (`TorchReductions`), else a double sum
        // rounded once to the dtype (which matched every 16-bit case of mergekit's).
        let sum = { (x: [Float]) -> Float in r.isIdentity ? TorchReductions.sum(x) : r.reduced(TorchReductions.wideSum(x)) }
        let norm = { (x: [Float]) -> Float in r.isIdentity ? TorchReductions.norm(x) : r.reduced(TorchReductions.wideNorm(x)) }
        if normalizeWeights {
            let total = sum(weights)
            weights = weights.map { r($0 / total) }
        }
        let base = input.base
        input.base = nil
        var points: [[Float]] = []
        for i in indices {
            var v = input.models[i]
            input.models[i] = []
            if let base { for j in v.indices { v[j] = r(v[j] - base[j]) } }
            points.append(v)
        }
        input.models = []
        let m = points.count, n = points[0].count
        let norms = points.map { norm($0) }
        // Cancelling points (checked on the mean of the unit vectors, before they replace the points).
        var mean = [Float](repeating: 0, count: n)
        var units = points
        for i in 0..<m {
            let d = r(norms[i] + addedEps)
            for j in 0..<n { units[i][j] = r(points[i][j] / d) }
        }
        for j in 0..<n {
            var s: Float = 0
            for i in 0..<m { s += r(units[i][j] * weights[i]) }
            mean[j] = r(s)
        }
        let meanNorm = norm(mean)
        if meanNorm < addedEps {
            guard m == 2 else {
                throw TesseraError(.invalidParameter, "multislerp: the weighted unit vectors sum to zero (tensor '\(input.name)')",
                                   hint: "antipodal models with weights that balance out cannot be interpolated; change the weights")
            }
            var out = [Float](repeating: 0, count: n)
            for j in 0..<n {
                out[j] = r(r(points[0][j] * weights[0]) + r(points[1][j] * weights[1]))
                if let base { out[j] = r(out[j] + base[j]) }
            }
            return out
        }
        points = []
        for j in 0..<n { mean[j] = r(mean[j] / meanNorm) }
        let dots = units.map { u in sum((0..<n).map { j in r(u[j] * mean[j]) }) }
        var tangent = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var s: Float = 0
            for i in 0..<m { s += r(r(units[i][j] - r(dots[i] * mean[j])) * weights[i]) }
            tangent[j] = r(s)
        }
        units = []
        let tangentNorm = r(norm(tangent) + addedEps)
        let c = r(cos(tangentNorm)), s = r(r(sin(tangentNorm)) / tangentNorm)
        let averageNorm = sum((0..<m).map { r(norms[$0] * weights[$0]) })
        var out = mean
        for j in 0..<n {
            out[j] = r(r(r(mean[j] * c) + r(tangent[j] * s)) * averageNorm)
            if let base { out[j] = r(out[j] + base[j]) }
        }
        return out
    }
}
