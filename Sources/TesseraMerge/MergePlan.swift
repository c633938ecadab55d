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
    /// mergekit's `dtype`: inputs are rounded to it before merging (computation is float32) and it is the output
    /// dtype unless `outDType` is set. nil: inputs as stored; output in the base's (else the first model's) dtype.
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
