/// `breadcrumbs_ties`: breadcrumbs' outlier-and-small-entry drop, then TIES's sign election.
public struct BreadcrumbsTiesMerge: MergeMethod {
    public static let name = "breadcrumbs_ties"
    public static let summary = "breadcrumbs sparsification + TIES sign election"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        CommonParameters.normalize(false), CommonParameters.rescale(false), CommonParameters.lambda, CommonParameters.consensus,
        CommonParameters.int8Mask,
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight, CommonParameters.density, CommonParameters.gamma]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let c = try TaskArithmeticKernel.consensus(input.parameters, method: Self.name)
        return try TaskArithmeticKernel.merge(&input, method: Self.name, sparsification: .magnitudeOutliers, consensus: c)
    }
}
