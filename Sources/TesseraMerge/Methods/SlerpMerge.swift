import Foundation
import TesseraCore
import TesseraIO

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

    public static func slerp(t: Float, _ v0: [Float], _ v1: [Float], dotThreshold: Double = 0.9995, eps: Double = 1e-8) -> [Float] {
        let n = v0.count
        var n0 = 0.0, n1 = 0.0, d = 0.0
        for j in 0..<n {
            let a = Double(v0[j]), b = Double(v1[j])
            n0 += a * a; n1 += b * b; d += a * b
        }
        n0 = n0.squareRoot(); n1 = n1.squareRoot()
        let dot = d / (n0 > eps ? n0 : 1) / (n1 > eps ? n1 : 1)
        var out = [Float](repeating: 0, count: n)
        if abs(dot) > dotThreshold {
            for j in 0..<n { out[j] = (1 - t) * v0[j] + t * v1[j] }
            return out
        }
        let theta0 = acos(dot)
        let sin0 = sin(theta0)
        let thetaT = theta0 * Double(t)
        let s0 = Float(sin(theta0 - thetaT) / sin0)
        let s1 = Float(sin(thetaT) / sin0)
        for j in 0..<n { out[j] = s0 * v0[j] + s1 * v1[j] }
        return out
    }
}
