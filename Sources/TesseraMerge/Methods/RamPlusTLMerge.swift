import TesseraCore
import TesseraIO

/// `ramplus_tl` (RAM+, tensor-local, arXiv 2601.13572) as mergekit 0.1.5 computes it: `ram`, with each model's
/// unique entries (those only it changes by more than epsilon) scaled by
///
///     λ_i = 1 + r · clamp(ρ_i, 0, alpha),   ρ_i = shared_i / max(unique_i, epsilon)
///
/// where shared_i and unique_i count model i's contributing entries in this tensor that other models change too,
/// and that only it changes. In float32 as torch computes it; the result is mergekit's bit for bit.
public struct RamPlusTLMerge: MergeMethod {
    public static let name = "ramplus_tl"
    public static let summary = "ram, with each model's unique changes boosted by its share of overlapping ones"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        .number("r", 0.1, help: "strength of the boost of unique entries"),
        .number("alpha", 0.2, help: "cap on the shared/unique ratio"),
        .number("epsilon", 1e-5, help: "task-vector entries of magnitude at most epsilon count as unchanged"),
    ]
    public static let modelParameters: [ParameterDefinition] = [
        .number("weight", 1, help: "accepted and ignored (ramplus_tl does not weight models)"),
    ]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let r = Float(try input.parameters.double("r"))
        let alpha = Float(try input.parameters.double("alpha"))
        let epsilon = Float(try input.parameters.double("epsilon"))
        return try RamMerge.merge(&input, method: Self.name) { shared, unique in
            let rho = Float(shared) / max(Float(unique), epsilon)
            return 1 + r * min(max(rho, 0), alpha)
        }
    }
}
