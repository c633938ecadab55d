import TesseraCore
import TesseraIO

/// `ramplus_tl` (RAM+, tensor-local, arXiv 2601.13572) as mergekit 0.1.5 computes it: `ram`, with each model's
/// unique entries (those only it changes by more than epsilon) scaled by
///
///     λ_i = 1 + r · clamp(ρ_i, 0, alpha),   ρ_i = shared_i / max(unique_i, epsilon)
///
/// where shared_i and unique_i count model i's contributing entries in this tensor that other models change too,
/// and that only it changes. In float32 as torch computes it; the result is mergekit's bit for bit. λ is a float32
/// tensor, so in a 16-bit merge dtype it promotes the unique terms, the sum over models and base + Σ to float32: the
/// result is float32 (`resultDType`), as mergekit writes it unless `out_dtype` is set.
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

    /// float32 in a 16-bit merge with at least one model besides the base (with none, the base is returned as is).
    public static func resultDType(computeDType: DType, nonBaseModels: Int) -> DType? {
        (computeDType == .f16 || computeDType == .bf16) && nonBaseModels > 0 ? .f32 : nil
    }

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
