/// `della_linear`: DELLA's MAGPRUNE drop and L1 rescale per task vector (see `DellaMerge`), then plain task
/// arithmetic θ_base + λ · Σ w_i δ_i (divided by Σ w_i with normalize: true; false by default, as in mergekit).
/// Per model: weight, density (default 1), epsilon (default 0.15); density ± epsilon must lie in (0, 1).
/// Seeded with `seed` (`DropRNG`); provenance records the seed and the generator.
public struct DellaLinearMerge: MergeMethod {
    public static let name = "della_linear"
    public static let summary = "magnitude-ranked random drop (MAGPRUNE) + L1 rescale, then task arithmetic"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        CommonParameters.normalize(false), CommonParameters.rescale(true), CommonParameters.lambda, CommonParameters.seed,
        CommonParameters.int8Mask,
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight, CommonParameters.density, DellaMagprune.epsilonParameter]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        try TaskArithmeticKernel.merge(&input, method: Self.name, sparsification: .dellaMagprune, consensus: .none)
    }

    public func provenance(parameters: MergeParameters) -> [(String, String)] { DareProvenance.entries(parameters) }
}
