import Foundation
import TesseraCore
import TesseraIO

/// `nuslerp` (mergekit's "NuSLERP"): spherical interpolation between exactly two models, with the interpolation
/// factor taken from their weights, t = w₁ / (w₀ + w₁) (0.5 when the weights sum to less than 1e-6 in magnitude).
/// With a base model it interpolates the task vectors θ_i − θ_base and adds the result back to the base; without one,
/// the models themselves.
///
/// The sphere is per vector: the whole tensor flattened (`nuslerp_flatten: true`, the default), else every row
/// along the last dimension, or with `nuslerp_row_wise: true` every vector along the first dimension (mergekit
/// transposes dimension 0 to the end). For each vector pair: unit vectors u = v / max(‖v‖, 1e-7), cos θ = Σ u₀u₁
/// clamped to [−1, 1]; when 1 − cos²θ ≤ 1e-16 the pair is colinear and the result is (1 − t)v₀ + t·v₁, otherwise
/// (sin((1 − t)θ)·v₀ + sin(tθ)·v₁) / sin θ on the unnormalised vectors.
///
/// Every op follows mergekit's torch code and is rounded to the compute dtype where torch's result has it
/// (`TorchRounding`). The scalar functions (acos, sin) are glibc's, as torch's scalar path uses for the one angle of a
/// flattened tensor; with many vectors (not flattened) torch evaluates the angles with its vectorised SLEEF routines,
/// which may differ from glibc's in the last bit.
public struct NuSlerpMerge: MergeMethod {
    public static let name = "nuslerp"
    public static let summary = "spherical interpolation of two models (or their task vectors), t from the weights"
    public static let baseUse = BaseUse.optional
    public static let globalParameters: [ParameterDefinition] = [
        .bool("nuslerp_flatten", true, help: "treat the whole tensor as one vector (false: one sphere per row)"),
        .bool("nuslerp_row_wise", false, help: "without flatten: vectors along the first dimension instead of the last"),
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let others = input.nonBaseIndices
        guard others.count == 2 else {
            throw TesseraError(.usage, "nuslerp: needs exactly two models besides the base; got \(others.count) (tensor '\(input.name)')",
                               hint: "list two models (and optionally a base_model)")
        }
        let w0 = try input.modelParameters[others[0]].double("weight"), w1 = try input.modelParameters[others[1]].double("weight")
        let total = w0 + w1
        let t = abs(total) < 1e-6 ? 0.5 : w1 / total
        let flatten = try input.parameters.bool("nuslerp_flatten")
        let rowWise = try input.parameters.bool("nuslerp_row_wise")
        let r = TorchRounding(input.computeDType)
        var v0 = input.models[others[0]], v1 = input.models[others[1]]
        input.models = []
        let base = input.base
        input.base = nil
        if let base {
            for j in v0.indices { v0[j] = r(v0[j] - base[j]) }
            for j in v1.indices { v1[j] = r(v1[j] - base[j]) }
        }
        var out = Self.nuslerp(t: t, v0, v1, shape: input.shape, flatten: flatten, rowWise: rowWise, r)
        if let base { for j in out.indices { out[j] = r(base[j] + out[j]) } }
        return out
    }

    /// The vectors of a tensor of `shape` (n elements): `count` vectors of `length` elements, element p of vector k at
    /// flat index k·length + p (rows) or p·count + k (vectors along dimension 0).
    static func layout(shape: [Int], count n: Int, flatten: Bool, rowWise: Bool) -> (count: Int, length: Int, strided: Bool) {
        if flatten || shape.count <= 1 || n == 0 { return (1, n, false) }
        if rowWise { return (n / shape[0], shape[0], true) }
        let last = shape[shape.count - 1]
        return (n / last, last, false)
    }

    static func nuslerp(t: Double, _ v0: [Float], _ v1: [Float], shape: [Int], flatten: Bool, rowWise: Bool, _ r: TorchRounding) -> [Float] {
        let n = v0.count
        var out = [Float](repeating: 0, count: n)
        let (count, length, strided) = layout(shape: shape, count: n, flatten: flatten, rowWise: rowWise)
        guard length > 0 else { return out }
        let clampMin = r(Float(1e-7)), colinearBound = r(Float(1e-16))
        let a = Float(1 - t), b = Float(t)
        var x0 = [Float](repeating: 0, count: length), x1 = x0
        for k in 0..<count {
            let index = { (p: Int) in strided ? p * count + k : k * length + p }
            for p in 0..<length { x0[p] = v0[index(p)]; x1[p] = v1[index(p)] }
            // float32 over contiguous vectors: torch's reduction order; otherwise a double sum rounded once (exact
            // enough that every 16-bit result matched mergekit's; strided float32 vectors may differ in the last bit).
            let exact = r.isIdentity && !strided
            let n0 = max(exact ? TorchReductions.norm(x0) : r.reduced(TorchReductions.wideNorm(x0)), clampMin)
            let n1 = max(exact ? TorchReductions.norm(x1) : r.reduced(TorchReductions.wideNorm(x1)), clampMin)
            let products = (0..<length).map { p in r(r(x0[p] / n0) * r(x1[p] / n1)) }
            let cosTheta = min(max(exact ? TorchReductions.sum(products) : r.reduced(TorchReductions.wideSum(products)), -1), 1)
            let colinear = r(1 - r(cosTheta * cosTheta)) <= colinearBound
            if colinear {
                for p in 0..<length { out[index(p)] = r(r(a * x0[p]) + r(b * x1[p])) }
                continue
            }
            let theta = r(acos(cosTheta))
            let sinTheta = r(sin(theta))
            let s0 = r(sin(r(a * theta))), s1 = r(sin(r(b * theta)))
            for p in 0..<length { out[index(p)] = r(r(r(s0 * x0[p]) + r(s1 * x1[p])) / sinTheta) }
        }
        return out
    }
}
