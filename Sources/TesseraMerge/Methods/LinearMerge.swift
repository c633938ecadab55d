import TesseraCore

/// `linear`: the weighted average Σ w_i θ_i / Σ w_i (normalize: true, the default) or the weighted sum Σ w_i θ_i.
/// The base model takes part only if it is listed among the models. Σ w_i = 0 under normalisation is an error
/// (mergekit would divide by zero).
public struct LinearMerge: MergeMethod {
    public static let name = "linear"
    public static let summary = "weighted average (or weighted sum with normalize: false)"
    public static let baseUse = BaseUse.ignored
    public static let globalParameters: [ParameterDefinition] = [CommonParameters.normalize(true), CommonParameters.int8Mask]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let m = input.models.count
        guard m > 0 else { throw TesseraError(.usage, "linear: no models to merge (tensor '\(input.name)')", hint: "list models in the merge config") }
        let n = input.models[0].count
        let weights = try input.modelParameters.map { Float(try $0.double("weight")) }
        let normalize = try input.parameters.bool("normalize")
        var sum: Float = 0
        for w in weights { sum += w }
        if normalize && abs(sum) < 1e-8 {
            throw TesseraError(.invalidParameter, "linear: the weights sum to \(sum) under normalize: true (tensor '\(input.name)')",
                               hint: "use weights with a non-zero sum, or normalize: false")
        }
        // Inputs are only read (a provenance hash may still hold them: writing would copy each one first), and the
        // result goes to fresh storage.
        let models = input.models
        input.models = []
        let out = withReadOnlyPointers(models) { ps in
            [Float](unsafeUninitializedCapacity: n) { o, initialized in
                Parallel.forChunks(n) { _, r in
                    for j in r {
                        var acc = weights[0] * ps[0][j]
                        for i in 1..<m { acc += weights[i] * ps[i][j] }
                        o[j] = normalize ? acc / sum : acc
                    }
                }
                initialized = n
            }
        }
        return out
    }
}
