/// `dare_ties`: DARE's random drop and rescale per task vector, then TIES's sign election (weights applied before
/// the vote). normalize defaults to false, as in mergekit.
public struct DareTiesMerge: MergeMethod {
    public static let name = "dare_ties"
    public static let summary = "random drop + rescale, then TIES sign election"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        CommonParameters.normalize(false), CommonParameters.rescale(true), CommonParameters.rescaleMode, CommonParameters.lambda, CommonParameters.seed,
        CommonParameters.consensus, CommonParameters.int8Mask,
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight, CommonParameters.density]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let c = try TaskArithmeticKernel.consensus(input.parameters, method: Self.name)
        return try TaskArithmeticKernel.merge(&input, method: Self.name, sparsification: .random, consensus: c)
    }

    public func provenance(parameters: MergeParameters) -> [(String, String)] { DareProvenance.entries(parameters) }
}
