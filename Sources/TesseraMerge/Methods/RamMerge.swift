import TesseraCore
import TesseraIO
import TesseraMath

/// `ram` (Reinforced Agent Merging, arXiv 2601.13572), per entry as mergekit 0.1.5 computes it, on the task vectors
/// τ_i = θ_i − θ_base of the models other than the base:
///
///     an entry of τ_i contributes when |τ_i| > epsilon (epsilon in float32, as torch compares);
///     c = the number of models contributing to the entry
///     θ = θ_base + Σ_i contributing τ_i · (c = 1 ? 1 : 1/c)
///
/// so an entry changed by one model takes that change whole, one changed by several takes their mean, and changes
/// of at most epsilon are dropped. Models carry no weights (a `weight` is accepted and ignored). The arithmetic is
/// mergekit's, operation for operation (each model's term, then the sum over models in order), so the result is
/// the same bit for bit.
public struct RamMerge: MergeMethod {
    public static let name = "ram"
    public static let summary = "keep changes unique to one model whole, average changes several models share"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        .number("epsilon", 1e-5, help: "task-vector entries of magnitude at most epsilon count as unchanged"),
    ]
    public static let modelParameters: [ParameterDefinition] = [
        .number("weight", 1, help: "accepted and ignored (ram does not weight models)"),
    ]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        try Self.merge(&input, method: Self.name, boost: nil)
    }

    /// The RAM merge; `boost` (ramplus_tl) scales each model's unique entries by its own λ_i, computed from the
    /// model's shared and unique entry counts as `boost(shared, unique)`.
    static func merge(_ input: inout TensorMergeInput, method: String, boost: ((_ shared: Int, _ unique: Int) -> Float)?) throws -> [Float] {
        var base = try input.requireBase(method)
        input.base = nil
        let idx = input.nonBaseIndices
        if idx.isEmpty { return base }
        let n = base.count
        var tvs: [[Float]] = []
        for i in idx { tvs.append(try input.takeTaskVector(i, base: base, method: method)) }
        let epsilonValue = try input.parameters.double("epsilon")
        guard !epsilonValue.isNaN else {
            throw TesseraError(.invalidParameter, "\(method): epsilon is NaN", hint: "use a small non-negative threshold, e.g. epsilon: 1e-5")
        }
        var epsilon = Float(epsilonValue)
        let m = tvs.count
        let rounding = TorchRounding(input.computeDType)
        if !rounding.isIdentity && boost != nil {
            // ramplus_tl in a 16-bit dtype: the task vectors are 16-bit tensors, compared with epsilon in the dtype;
            // from there on the float32 λ promotes the terms and the sum (mergekit's result is float32).
            for i in 0..<m { rounding.round(&tvs[i]) }
            epsilon = rounding(epsilon)
        }
        // ramplus_tl: per model, the entries it shares with another model and the entries only it changes.
        var lambdas = [Float](repeating: 1, count: m)
        if let boost {
            var shared = [Int](repeating: 0, count: m), unique = [Int](repeating: 0, count: m)
            for j in 0..<n {
                var c = 0
                for i in 0..<m where abs(tvs[i][j]) > epsilon { c += 1 }
                guard c > 0 else { continue }
                for i in 0..<m where abs(tvs[i][j]) > epsilon {
                    if c == 1 { unique[i] += 1 } else { shared[i] += 1 }
                }
            }
            for i in 0..<m { lambdas[i] = boost(shared[i], unique[i]) }
        }
        let lambda = lambdas, boosted = boost != nil, threshold = epsilon
        if !rounding.isIdentity && !boosted {
            Self.mergeRounded(&base, &tvs, epsilon: epsilon, rounding)
            return base
        }
        withBufferPointers(&tvs) { t in
            base.withUnsafeMutableBufferPointer { bb in
                guard let bp = bb.baseAddress else { return }
                let out = SharedMutablePointer(bp)
                let tp = UncheckedSendable(t)
                Parallel.forChunks(n) { _, r in
                    let t = tp.value
                    for j in r {
                        var c = 0
                        for i in 0..<m where abs(t[i][j]) > threshold { c += 1 }
                        let unique: Float = c == 1 ? 1 : 0, overlap: Float = c > 1 ? 1 : 0
                        let divisor = Float(max(c, 1))
                        var merged: Float = 0
                        for i in 0..<m {
                            let z = t[i][j] * (abs(t[i][j]) > threshold ? 1 : 0)
                            let own = boosted ? z * unique * lambda[i] : z * unique
                            // The overlap share is a 16-bit tensor in a 16-bit ramplus_tl (rounding: the identity
                            // otherwise); the float32 own term promotes the sum.
                            merged += own + rounding(z * overlap / divisor)
                        }
                        out[j] = out[j] + merged
                    }
                }
            }
        }
        return base
    }

    /// ram in a 16-bit merge dtype, op by op as mergekit's torch code runs there: the task vectors rounded to the
    /// dtype, `|τ| > ε` compared with ε converted to the dtype (torch casts a comparison's scalar to the tensor's
    /// dtype), the masked terms (exact) and the overlap share τ / count each rounded, the sum over models accumulated
    /// in float32 in model order and rounded once (torch's reduction over a 16-bit tensor), then base + Σ rounded.
    static func mergeRounded(_ base: inout [Float], _ tvs: inout [[Float]], epsilon: Float, _ rounding: TorchRounding) {
        let n = base.count, m = tvs.count
        let r = rounding, eps = rounding(epsilon)
        withBufferPointers(&tvs) { t in
            base.withUnsafeMutableBufferPointer { bb in
                guard let bp = bb.baseAddress else { return }
                let out = SharedMutablePointer(bp)
                let tp = UncheckedSendable(t)
                Parallel.forChunks(n) { _, range in
                    let t = tp.value
                    for j in range {
                        var c = 0
                        for i in 0..<m where abs(r(t[i][j])) > eps { c += 1 }
                        let divisor = Float(max(c, 1))
                        var merged: Float = 0
                        for i in 0..<m {
                            let tv = r(t[i][j])
                            let z: Float = abs(tv) > eps ? tv : 0
                            merged += c == 1 ? z : (c > 1 ? r(z / divisor) : 0)
                        }
                        out[j] = r(out[j] + r(merged))
                    }
                }
            }
        }
    }
}
