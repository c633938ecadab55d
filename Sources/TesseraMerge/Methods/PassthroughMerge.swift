import TesseraCore
import TesseraIO

/// `passthrough`: the one input model's tensor, unchanged, or multiplied by its `scale` when the model sets one (in
/// float32, as mergekit multiplies). mergekit uses it for frankenmerges, where each slice names one source; `scale`
/// is a per-model parameter that may vary by tensor, e.g. `scale: [{filter: o_proj, value: 0}, {value: 1}]`, and a
/// tensor that no filter matches is left unscaled. Exactly one model (mergekit allows no more): listing several is
/// an error (the base model listed beside another counts as two). A `base_model` that is not listed is not read.
public struct PassthroughMerge: MergeMethod {
    public static let name = "passthrough"
    public static let summary = "copy the single input model's tensors (optionally scaled)"
    public static let baseUse = BaseUse.ignored
    public static let globalParameters: [ParameterDefinition] = []
    public static let modelParameters: [ParameterDefinition] = [
        .number("scale", nil, help: "multiply the model's tensor by this factor (unset: copied unchanged)"),
    ]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        guard input.models.count == 1 else {
            throw TesseraError(.usage, "passthrough: takes exactly one model; got \(input.models.count) (tensor '\(input.name)')",
                               hint: "list one model (to stack layers of several models, use a slices config)")
        }
        var x = input.models[0]
        input.models = []
        if input.modelParameters[0].has("scale") {
            let s = Float(try input.modelParameters[0].double("scale"))
            for j in x.indices { x[j] *= s }
        }
        return x
    }
}
