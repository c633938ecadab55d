import TesseraCore
import TesseraIO

/// `passthrough`: the one input's tensor, unchanged or times its `scale` (mergekit's passthrough). With `slices:` it
/// stacks layers of one model or of several (frankenmerges), one source per slice.
public struct PassthroughMerge: MergeMethod {
    public static let name = "passthrough"
    public static let summary = "copy the single input's tensor (times its scale): layer stacking with slices"
    public static let baseUse = BaseUse.ignored
    public static let globalParameters: [ParameterDefinition] = []
    public static let modelParameters: [ParameterDefinition] = [.number("scale", nil, help: "multiplies the tensor (default: unchanged)")]
    public init() {}
    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        guard input.models.count == 1 else {
            throw TesseraError(.usage, "passthrough takes exactly one model per tensor, got \(input.models.count) (tensor '\(input.name)')",
                               hint: "give each slice a single source, or use another method to merge several")
        }
        guard input.modelParameters[0].has("scale") else { return input.models[0] }
        let scale = Float(try input.modelParameters[0].double("scale"))
        return input.models[0].map { $0 * scale }
    }
}
