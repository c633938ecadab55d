import TesseraCore

/// One input checkpoint of a merge.
public struct MergeInputModel {
    /// How the input is named in messages and provenance: a path, or `REV:path`.
    public var name: String
    public var source: TensorSource
    /// Per-model parameters (weight, density, gamma, ...), each possibly varying by tensor.
    public var parameters: [String: ParameterSetting]
    /// The model's diagonal Fisher, for `fisher`.
    public var fisher: TensorSource?
    /// The Fisher's name, for provenance.
    public var fisherName: String?

    public init(name: String, source: TensorSource, parameters: [String: ParameterSetting] = [:], fisher: TensorSource? = nil,
                fisherName: String? = nil) {
        self.name = name
        self.source = source
        self.parameters = parameters
        self.fisher = fisher
        self.fisherName = fisherName
    }
}

/// A resolved merge: method, sources and parameters. Built by hand or from a mergekit YAML config
/// (`MergeConfig.plan(resolver:)`), run by `MergeDriver.run`.
public struct MergePlan {
    public var method: String
    public var base: MergeInputModel?
    public var models: [MergeInputModel]
    /// Global parameters (normalize, lambda, t, seed, ties_variant, ...).
    public var parameters: [String: ParameterSetting]
    /// mergekit's `dtype`: inputs are rounded to it before merging, methods compute in it as mergekit's torch ops do
    /// (each op rounded to it; linear and slerp compute in float32 and round once, as mergekit's do), and it is the
    /// output dtype unless `outDType` is set. nil: inputs as stored and computed in their dtype; output in the base's
    /// (else the first model's) dtype.
    public var dtype: DType?
    /// mergekit's `out_dtype`.
    public var outDType: DType?

    public init(method: String, base: MergeInputModel? = nil, models: [MergeInputModel], parameters: [String: ParameterSetting] = [:],
                dtype: DType? = nil, outDType: DType? = nil) {
        self.method = method
        self.base = base
        self.models = models
        self.parameters = parameters
        self.dtype = dtype
        self.outDType = outDType
    }

    /// Whether listed model `i` is the base model again (same source object or same name).
    public func isBase(_ i: Int) -> Bool {
        guard let base else { return false }
        return models[i].source === base.source || models[i].name == base.name
    }
}

extension MergePlan {
    /// mergekit lets per-model parameters stand at the top level as defaults for every model (`parameters:
    /// {density: 0.5}` beside `models:`); this moves such entries into each model that does not set them, so that
    /// methods see them where they look for them.
    public func distributingModelDefaults() throws -> MergePlan {
        let type = try MergeRegistry.method(named: method)
        let globalNames = Set(type.globalParameters.flatMap { [$0.name] + $0.aliases })
        let modelNames = Set(type.modelParameters.flatMap { [$0.name] + $0.aliases })
        var out = self
        for (key, value) in parameters where !globalNames.contains(key) && modelNames.contains(key) {
            out.parameters.removeValue(forKey: key)
            for k in out.models.indices where out.models[k].parameters[key] == nil {
                out.models[k].parameters[key] = value
            }
        }
        return out
    }
}
