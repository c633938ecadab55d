/// `breadcrumbs` (Davari & Belilovsky 2023): each task vector drops its largest-magnitude fraction `gamma` (the
/// outliers) and keeps the next `density` fraction below them, then task arithmetic. Kept ranks are
/// [n_bot, n_bot + ⌊density·n⌋) of the ascending |τ| order (ties in torch's sort order, `TorchSort`), n_bot = n − ⌊density·n⌋ − ⌊gamma·n⌋.
public struct BreadcrumbsMerge: MergeMethod {
    public static let name = "breadcrumbs"
    public static let summary = "drop the top-gamma outliers and small entries, keep density; task arithmetic"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        CommonParameters.normalize(false), CommonParameters.rescale(false), CommonParameters.lambda, CommonParameters.int8Mask,
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight, CommonParameters.density, CommonParameters.gamma]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        try TaskArithmeticKernel.merge(&input, method: Self.name, sparsification: .magnitudeOutliers, consensus: .none)
    }
}
