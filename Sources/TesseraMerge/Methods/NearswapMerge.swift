import TesseraCore
import TesseraIO
import TesseraMath

/// `nearswap` (alchemonaut's NearSwap), per entry as mergekit 0.1.5 computes it, from the base a and the one other
/// model b, in float32 (in a 16-bit merge dtype each op rounded to it, as torch computes there):
///
///     w = clamp(t / max(|a − b|, 1e-6), 0, 1)     (as torch evaluates it: (1 / max(|a − b|, 1e-6)) · t)
///     θ = w·b + (1 − w)·a
///
/// Entries where the models nearly agree (|a − b| ≤ t) take b; the further apart they are, the more stays with the
/// base. `t` (required) may vary by layer or tensor like any parameter; t ≤ 0 gives the base. The base and exactly
/// one other model (mergekit allows no more). The arithmetic is mergekit's, operation for operation, so the result
/// is the same bit for bit, in every dtype.
public struct NearswapMerge: MergeMethod {
    public static let name = "nearswap"
    public static let summary = "take the other model's entries where it is within t of the base, blend elsewhere"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        .number("t", nil, help: "similarity threshold: entries closer than t are swapped in whole"),
    ]
    public static let modelParameters: [ParameterDefinition] = [
        .number("weight", 1, help: "accepted and ignored (nearswap does not weight models)"),
    ]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        var a = try input.requireBase(Self.name)
        input.base = nil
        let others = input.nonBaseIndices
        guard others.count == 1 else {
            throw TesseraError(.usage, "nearswap: needs exactly two models, the base and one other; got \(others.count) besides the base (tensor '\(input.name)')",
                               hint: "list the base model and one other model")
        }
        let b = input.models[others[0]]
        input.models = []
        guard b.count == a.count else {
            throw TesseraError(.shapeMismatch, "nearswap: tensor '\(input.name)' has \(b.count) values in the model, \(a.count) in the base")
        }
        let t = Float(try input.parameters.double("t"))
        let floor = Float(1e-6)
        let rounding = TorchRounding(input.computeDType)
        b.withUnsafeBufferPointer { bb in
            a.withUnsafeMutableBufferPointer { ab in
                guard let ap = ab.baseAddress, let bp = bb.baseAddress else { return }
                let out = SharedMutablePointer(ap), other = SharedPointer(bp)
                if rounding.isIdentity {
                    Parallel.forChunks(ab.count) { _, r in
                        for j in r {
                            let x = out[j], y = other[j]
                            // torch evaluates `t / tensor` as tensor.reciprocal() * t.
                            let w = min(max((1 / max(abs(x - y), floor)) * t, 0), 1)
                            out[j] = w * y + (1 - w) * x
                        }
                    }
                } else {
                    // In a 16-bit dtype every op's result is a tensor of that dtype: each rounds (the clamps and |·|
                    // only select or negate values of the dtype; the floor is the dtype's value of 1e-6).
                    let r = rounding, lowest = rounding(floor)
                    Parallel.forChunks(ab.count) { _, range in
                        for j in range {
                            let x = out[j], y = other[j]
                            let w = min(max(r(r(1 / max(abs(r(x - y)), lowest)) * t), 0), 1)
                            out[j] = r(r(w * y) + r(r(1 - w) * x))
                        }
                    }
                }
            }
        }
        return a
    }
}
