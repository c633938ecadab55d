/// `dare_linear` (Yu et al. 2024): each task vector keeps each entry with probability `density` (seeded, see
/// `DropRNG`), survivors rescaled (rescale: true, default) so the task vector keeps its L1 norm
/// (mergekit 0.1.5; ≈ 1/density) or, with rescale_mode: density, divided by density (the DARE paper), then task arithmetic.
public struct DareLinearMerge: MergeMethod {
    public static let name = "dare_linear"
    public static let summary = "random drop (keep p = density, L1 rescale) + task arithmetic"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        CommonParameters.normalize(false), CommonParameters.rescale(true), CommonParameters.rescaleMode, CommonParameters.lambda, CommonParameters.seed,
        CommonParameters.int8Mask,
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight, CommonParameters.density]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        try TaskArithmeticKernel.merge(&input, method: Self.name, sparsification: .random, consensus: .none)
    }

    public func provenance(parameters: MergeParameters) -> [(String, String)] { DareProvenance.entries(parameters) }
}

enum DareProvenance {
    static func entries(_ p: MergeParameters) -> [(String, String)] {
        let seed = (try? DareSeed.value(p, method: "dare")) ?? 0
        return [("tessera.merge.seed", String(Int64(bitPattern: seed))), ("tessera.merge.rng", DropRNG.generatorName)]
    }
}
