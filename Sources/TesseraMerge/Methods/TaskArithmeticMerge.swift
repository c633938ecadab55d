/// `task_arithmetic` (Ilharco et al. 2023): θ_base + λ · Σ w_i (θ_i − θ_base), divided by Σ w_i when
/// normalize: true (default false). Negate a task vector with lambda: -1, not with a lone weight -1 under
/// normalize: true (the signed divisor cancels it).
public struct TaskArithmeticMerge: MergeMethod {
    public static let name = "task_arithmetic"
    public static let summary = "θ_base + λ Σ w_i τ_i"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        CommonParameters.normalize(false), CommonParameters.lambda, CommonParameters.rescale(false), CommonParameters.int8Mask,
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        try TaskArithmeticKernel.merge(&input, method: Self.name, sparsification: .none, consensus: .none)
    }
}
