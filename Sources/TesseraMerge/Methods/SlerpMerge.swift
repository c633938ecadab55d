import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// `slerp`: spherical interpolation between the base model (t = 0) and the one other model (t = 1), per tensor,
/// as mergekit computes it: directions are the tensors scaled to unit norm (left as they are when the norm ≤ 1e-8);
/// if |cos θ| > 0.9995 the tensors are nearly colinear and the result is the plain lerp (1 − t)·v0 + t·v1;
/// otherwise sin((1 − t)θ)/sin θ · v0 + sin(tθ)/sin θ · v1 on the original (unnormalised) tensors.
/// `t` may be a gradient list over layers or a filter list, as in mergekit configs.
public struct SlerpMerge: MergeMethod {
    public static let name = "slerp"
    public static let summary = "spherical interpolation from the base (t = 0) to the other model (t = 1)"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        .number("t", nil, help: "interpolation factor; 0 gives the base model"),
        .number("dot_threshold", 0.9995, aliases: ["DOT_THRESHOLD"], help: "|cos| above which lerp is used"),
        .number("eps", 1e-8, help: "norms at or below this are not normalised"),
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let v0 = try input.requireBase(Self.name)
        let others = input.nonBaseIndices
        if others.isEmpty { return v0 }
        guard others.count == 1 else {
            throw TesseraError(.usage, "slerp: needs exactly two models, the base and one other; got \(others.count) besides the base (tensor '\(input.name)')",
                               hint: "list the base model and one other model")
        }
        let v1 = input.models[others[0]]
        let t = try input.parameters.double("t")
        let threshold = try input.parameters.double("dot_threshold")
        let eps = try input.parameters.double("eps")
        return Self.slerp(t: Float(t), v0, v1, dotThreshold: threshold, eps: eps)
    }

    /// float32 arithmetic as mergekit's torch code does it: the norms and the sum of the products of the normalised
    /// entries in torch's reduction order (`TorchReductions`), the clamp to [−1, 1], acos and sin (glibc's, as
    /// torch's scalar path), (1 − t)·θ and the coefficients, each rounded to float32, and coef₀·v₀ + coef₁·v₁ with
    /// three roundings. mergekit splits tensors longer than 2^20 / (tensors batched together) elements into chunks
    /// whose norms and dot products it combines; for those the float32 result may differ in the last bit.
    public static func slerp(t: Float, _ v0: [Float], _ v1: [Float], dotThreshold: Double = 0.9995, eps: Double = 1e-8) -> [Float] {
        let n = v0.count
        let e = Float(eps)
        // The two norms side by side (each is one serial pass in torch's order), then the products summed on the fly.
        var norms: (Float, Float) = (0, 0)
        if n >= Parallel.minimumParallelCount {
            withUnsafeMutablePointer(to: &norms) { np in
                let out = SharedMutableRawPointer(UnsafeMutableRawPointer(np))
                Parallel.forEach(2) { i in
                    let value = (i == 0 ? v0 : v1).withUnsafeBufferPointer { TorchReductions.norm($0) }
                    out.base.storeBytes(of: value, toByteOffset: i * MemoryLayout<Float>.stride, as: Float.self)
                }
            }
        } else {
            norms = (TorchReductions.norm(v0), TorchReductions.norm(v1))
        }
        let na = norms.0 > e ? norms.0 : 1
        let nb = norms.1 > e ? norms.1 : 1
        let sum = v0.withUnsafeBufferPointer { x in v1.withUnsafeBufferPointer { y in TorchReductions.sumOfQuotientProducts(x, y, na, nb) } }
        let dot = min(max(sum, -1), 1)
        var out = [Float](repeating: 0, count: n)
        let a: Float, b: Float
        if abs(dot) > Float(dotThreshold) {
            a = 1 - t
            b = t
        } else {
            let theta = acos(dot)
            let sinTheta = sin(theta)
            a = sin((1 - t) * theta) / sinTheta
            b = sin(t * theta) / sinTheta
        }
        let (ca, cb) = (a, b)
        out.withUnsafeMutableBufferPointer { ob in
            v0.withUnsafeBufferPointer { x in
                v1.withUnsafeBufferPointer { y in
                    guard let o = ob.baseAddress, let px = x.baseAddress, let py = y.baseAddress else { return }
                    let dst = SharedMutablePointer(o), s0 = SharedPointer(px), s1 = SharedPointer(py)
                    Parallel.forChunks(n) { _, r in for j in r { dst[j] = ca * s0[j] + cb * s1[j] } }
                }
            }
        }
        return out
    }
}
