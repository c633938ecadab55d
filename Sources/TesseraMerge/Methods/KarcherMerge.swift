import Foundation
import TesseraCore
import TesseraIO

/// `karcher`: the equal-weight Karcher (Riemannian) mean of the models on the unit hypersphere, rescaled by their
/// mean norm. Every model takes part, the base too when one is given (mergekit adds a base_model that is not listed
/// to the inputs, after the listed ones); there are no per-model parameters.
///
/// Per tensor (flattened): units u_i = v_i / ‖v_i‖ (zero for a zero tensor); models with ‖v_i‖ ≤ tol are left out of
/// the mean (all of them: the result is zero); the start is the normalised average of the units (the first unit if
/// that average is shorter than tol); then up to `max_iter` steps of the fixed-point iteration: the tangent
/// Σ α_i θ_i/sin θ_i (u_i − cos θ_i m), θ_i = acos(m·u_i) (terms with θ_i < tol skipped), stop when ‖tangent‖ < tol,
/// else m ← cos‖t‖ m + sin‖t‖ t/‖t‖, renormalised. The result is (Σ_i ‖v_i‖/N) m, the sum over every model.
///
/// The iteration runs inside the tensor (memory: one unit vector per model plus two working vectors). Norms are
/// float32 (mergekit takes them of the float32 copy whatever the dtype); every op on tensors is rounded to the compute
/// dtype where torch's result has it (`TorchRounding`): torch rounds a float32 0-dim tensor that comes first in a
/// product with a 16-bit tensor to that dtype, and keeps its float32 value when it comes second.
public struct KarcherMerge: MergeMethod {
    public static let name = "karcher"
    public static let summary = "Karcher mean of the models on the hypersphere, scaled by their mean norm"
    public static let baseUse = BaseUse.optional
    public static let globalParameters: [ParameterDefinition] = [
        .number("max_iter", 10, help: "iterations of the Karcher mean at most"),
        .number("tol", 1e-5, help: "norms and steps below this end the iteration (or leave a model out)"),
    ]
    public static let modelParameters: [ParameterDefinition] = []
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        var tensors = input.models
        input.models = []
        if let base = input.base, !input.isBaseModel.contains(true) { tensors.append(base) }
        input.base = nil
        guard !tensors.isEmpty else {
            throw TesseraError(.usage, "karcher: no models to merge (tensor '\(input.name)')", hint: "list the models to merge")
        }
        if tensors.count == 1 { return tensors[0] }
        let maxIterations = try input.parameters.double("max_iter")
        guard maxIterations >= 0, maxIterations == maxIterations.rounded(), maxIterations < 1e9 else {
            throw TesseraError(.invalidParameter, "karcher: max_iter \(maxIterations) is not a non-negative integer", hint: "use e.g. max_iter: 10")
        }
        let tol = try input.parameters.double("tol")
        return Self.karcher(&tensors, maxIterations: Int(maxIterations), tol: tol, TorchRounding(input.computeDType))
    }

    /// The tensors are consumed (replaced by their unit vectors).
    static func karcher(_ tensors: inout [[Float]], maxIterations: Int, tol: Double, _ r: TorchRounding) -> [Float] {
        let count = tensors.count, n = tensors[0].count
        let alpha = 1.0 / Double(count)
        let norms = tensors.map { TorchReductions.norm($0) }
        for i in 0..<count {
            let norm = norms[i]
            for j in 0..<n { tensors[i][j] = norm == 0 ? 0 : r(tensors[i][j] / norm) }
        }
        let valid = (0..<count).filter { Double(norms[$0]) > tol }
        if valid.isEmpty { return [Float](repeating: 0, count: n) }
        let alphaSum = valid.reduce(0.0) { s, _ in s + alpha }
        let weights = valid.map { _ in Float(alpha / alphaSum) }
        var mean = [Float](repeating: 0, count: n)
        for (k, i) in valid.enumerated() {
            for j in 0..<n { mean[j] = r(mean[j] + r(weights[k] * tensors[i][j])) }
        }
        let meanNorm = TorchReductions.norm(mean)
        if Double(meanNorm) < tol {
            mean = tensors[valid[0]]
        } else {
            for j in 0..<n { mean[j] = r(mean[j] / meanNorm) }
        }
        var tangent = [Float](repeating: 0, count: n)
        for _ in 0..<maxIterations {
            for j in 0..<n { tangent[j] = 0 }
            for (k, i) in valid.enumerated() {
                let unit = tensors[i]
                let dot = min(max(r.reduced(TorchReductions.wideDot(mean, unit)), -1), 1)
                let theta = r(acos(dot))
                if Double(theta) < tol { continue }
                let coefficient = r(weights[k] * r(theta / r(sin(theta))))
                for j in 0..<n { tangent[j] = r(tangent[j] + r(coefficient * r(unit[j] - r(dot * mean[j])))) }
            }
            let tangentNorm = TorchReductions.norm(tangent)
            if Double(tangentNorm) < tol { break }
            let c = r(cos(tangentNorm)), s = r(sin(tangentNorm))
            for j in 0..<n { mean[j] = r(r(c * mean[j]) + r(s * r(tangent[j] / tangentNorm))) }
            let unitNorm = TorchReductions.norm(mean)
            if Double(unitNorm) > tol { for j in 0..<n { mean[j] = r(mean[j] / unitNorm) } }
        }
        var scale: Float = 0
        for i in 0..<count { scale += Float(alpha) * norms[i] }
        let factor = r(scale)
        return mean.map { r(factor * $0) }
    }
}
