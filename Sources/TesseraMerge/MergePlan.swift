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
    /// Without `outDType` and `dtype`, write each tensor in the dtype it was loaded in (promoted across the inputs),
    /// even when the method's result is wider (`MergeMethod.resultDType`: arcee_fusion and ramplus_tl promote a
    /// 16-bit merge to float32, which mergekit writes): for merges into an existing checkpoint, whose tensors keep
    /// their dtype (a `git merge` of a bfloat16 model). The float32 result is then rounded once, as `out_dtype` does.
    public var keepsLoadedDType = false
    /// Each tensor's position t in [0, 1] for gradient parameters, when the plan sets them (a slice of a
    /// frankenmerge: t runs over the slice's layers). nil: from the tensor names (`LayerPositions`).
    public var layerPositions: [String: Double]?

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
    /// {density: 0.5}` beside `models:`); this moves such entries into each model that does not set them (or whose
    /// filter list leaves a tensor unset, as mergekit falls through to the next scope), so that methods see them
    /// where they look for them.
    public func distributingModelDefaults() throws -> MergePlan {
        let type = try MergeRegistry.method(named: method)
        let globalNames = Set(type.globalParameters.flatMap { [$0.name] + $0.aliases })
        let modelNames = Set(type.modelParameters.flatMap { [$0.name] + $0.aliases })
        var out = self
        for (key, value) in parameters where !globalNames.contains(key) && modelNames.contains(key) {
            out.parameters.removeValue(forKey: key)
            for k in out.models.indices {
                out.models[k].parameters[key] = out.models[k].parameters[key]?.fallingBack(to: value) ?? value
            }
        }
        return out
    }
}

/// A config as the merges that make its output, run one after another into the same checkpoint: one plan for a
/// `models:` config, one per slice for a `slices:` config (each over views of its sources' layers, renumbered).
public struct MergeProgram {
    public var segments: [MergePlan]
    /// The plan provenance and the model card describe: the config's method, base and every distinct input, whole.
    public var summaryPlan: MergePlan
    /// The output's number of layers when it differs from the inputs' (slices); its config.json is written to match.
    public var outputLayers: Int? { outputLayerOrigins?.count }
    /// For each output layer, the input layer it comes from (the first source of its slice): per-layer config
    /// lists (`layer_types`, GPT-Neo's `attention_types`) are rebuilt from it. nil for a `models:` config.
    public var outputLayerOrigins: [Int]?
    /// The input whose config and tokenizer files a folder output takes (the base model, else the first input).
    public var referenceName: String

    public init(segments: [MergePlan], summaryPlan: MergePlan, outputLayerOrigins: [Int]?, referenceName: String) {
        self.segments = segments
        self.summaryPlan = summaryPlan
        self.outputLayerOrigins = outputLayerOrigins
        self.referenceName = referenceName
    }

    /// Every output tensor's name and shape, in output order (sinks reserve their header from it).
    public var outputShapes: [(String, [Int])] {
        segments.flatMap { p -> [(String, [Int])] in
            let r = (p.base ?? p.models[0]).source
            return r.tensorNames.map { ($0, r.tensorInfo($0)?.shape ?? []) }
        }
    }
}
