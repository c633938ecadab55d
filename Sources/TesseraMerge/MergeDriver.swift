import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// What a finished merge reports.
public struct MergeSummary: Sendable {
    public var method: String
    public var tensorCount: Int
    public var parameterCount: Int
    /// Global parameters as resolved for the first tensor (defaults filled in): what provenance records.
    public var resolvedParameters: MergeParameters
    /// Method-specific provenance (DARE: seed and generator).
    public var methodProvenance: [(String, String)]
}

/// The streaming merge: one tensor at a time, from the sources to the sink. Memory is bounded by one tensor of each
/// input plus the output, never a whole model.
public enum MergeDriver {
    /// Merges every tensor of the plan and hands each result to `sink` in the reference model's tensor order (the
    /// base's, else the first model's). With `float32Sink`, results whose output dtype is F32 go there as floats
    /// instead, with no encoding copy (a file writer takes them straight from float storage).
    @discardableResult
    /// `progress`, when given, is told the number of tensors done and the total after each tensor.
    /// With `mappedSink`, float32 tensors that `passthrough` takes unchanged from a file go there as the file's mapping
    /// (see `MergeJob.unchangedMapping`); the sink may hold the mapping until it has written it.
    public static func run(_ plan: MergePlan, float32Sink: ((_ name: String, _ values: [Float], _ shape: [Int]) throws -> Void)? = nil,
                           mappedSink: ((_ name: String, _ values: MappedFloat32, _ shape: [Int]) throws -> Void)? = nil,
                           progress: ((_ done: Int, _ total: Int) -> Void)? = nil,
                           sink: (_ name: String, _ tensor: RawTensor) throws -> Void) throws -> MergeSummary {
        let type = try MergeRegistry.method(named: plan.method)
        let job = try MergeJob(plan: plan, type: type)
        var method = type.init()
        try method.prepare(MergePreparation(tensorNames: job.floatTensorNames.filter { !job.withoutFisher.contains($0) },
                                            loadInput: { try job.loadInput($0) }))
        var parameterCount = 0
        for (done, name) in job.names.enumerated() {
            defer { progress?(done + 1, job.names.count) }
            if let passthrough = try job.nonFloatPassthrough(name) {
                try sink(name, passthrough)
                continue
            }
            if let mappedSink, let mapped = try job.unchangedMapping(name) {
                // The float32 check every result goes through: a non-finite input fails here as it would merged.
                if let k = TesseraMath.FloatCodec.firstNonFinite(mapped.values) {
                    throw TesseraError(.invalidParameter, "\(plan.method): the merge of tensor '\(name)' produced \(mapped.values[k]) at index \(k)",
                                       hint: "check the inputs and parameters (zero weight sums, zero Fishers, NaN inputs); nothing was written for this tensor")
                }
                try mappedSink(name, mapped, try job.reference.source.requireInfo(name).shape)
                parameterCount += mapped.values.count
                continue
            }
            var out: [Float], shape: [Int], count: Int
            // Views hold the stored values: only when the plan rounds to nothing coarser than float32.
            if type.readsViews, plan.dtype == nil || plan.dtype == .f32, let viewed = try job.loadViews(name) {
                shape = viewed.shape
                count = elementCount(shape) ?? 0
                out = try viewed.withViews { try method.merge(views: $0) }
            } else {
                var input = try job.loadInput(name)
                shape = input.shape
                count = input.elementCount
                out = job.withoutFisher.contains(name) ? try Self.commonValues(input, method: plan.method) : try method.merge(&input)
            }
            guard out.count == count else {
                throw TesseraError(.shapeMismatch, "\(plan.method): produced \(out.count) values for tensor '\(name)' of shape \(shape)")
            }
            let dtype = job.outputDType(name)
            // mergekit's methods return a tensor of the compute dtype (or of the method's own result dtype), which
            // `out_dtype` then converts: a 16-bit result rounds once more when the output dtype is another one.
            let result = job.resultDType(name)
            if result != .f32 && result != dtype { FloatCodec.quantize(&out, to: result) }
            let nonFinite = { (k: Int) in
                TesseraError(.invalidParameter, "\(plan.method): the merge of tensor '\(name)' produced \(out[k]) at index \(k)",
                             hint: "check the inputs and parameters (zero weight sums, zero Fishers, NaN inputs); nothing was written for this tensor")
            }
            if dtype == .f32, let float32Sink {
                if let k = FloatCodec.firstNonFinite(out) { throw nonFinite(k) }
                try float32Sink(name, out, shape)
            } else {
                guard let encoded = try FloatCodec.encodeFinite(out, shape: shape, dtype: dtype) else {
                    if let k = FloatCodec.firstNonFinite(out) { throw nonFinite(k) }
                    // Finite in float32 but too large for the 16-bit output: writing it would store infinities.
                    let k = FloatCodec.firstOverflow(out, dtype: dtype) ?? 0
                    let largest = FloatCodec.largestFinite(dtype).map { " (largest finite \($0))" } ?? ""
                    throw TesseraError(.invalidParameter,
                                       "\(plan.method): the merge of tensor '\(name)' produced \(out[k]) at index \(k), which overflows \(dtype.rawValue)\(largest)",
                                       hint: dtype == .f16 ? "write the merge as float32 or bfloat16 (mergekit config: out_dtype: float32); nothing was written"
                                           : "write the merge as float32 (mergekit config: out_dtype: float32); nothing was written")
                }
                try sink(name, encoded)
            }
            parameterCount += count
        }
        let global = try job.globalParameters(job.names.first ?? "")
        return MergeSummary(method: type.name, tensorCount: job.names.count, parameterCount: parameterCount,
                            resolvedParameters: global, methodProvenance: method.provenance(parameters: global))
    }

    /// Merges into a safetensors file (tensors collected, then written atomically with provenance metadata).
    /// The values every model holds for a tensor no Fisher covers, or an error naming it when they differ.
    static func commonValues(_ input: TensorMergeInput, method: String) throws -> [Float] {
        let first = input.models[0]
        for m in input.models.dropFirst() where !m.elementsEqual(first, by: { $0.bitPattern == $1.bitPattern }) {
            throw TesseraError(.notFound, "\(method): tensor '\(input.name)' has no Fisher in any model and its values differ between the models",
                               hint: "estimate the Fisher for this tensor too, or merge it with another method (a config's per-tensor filter)")
        }
        return first
    }

    /// For very large models prefer a sink that writes tensor by tensor.
    public static func mergeToFile(_ plan: MergePlan, path: String, metadata extra: [(String, String)] = [],
                                   tensorHash: ((TensorSource, String) -> String?)? = nil) throws -> MergeSummary {
        var tensors: [(String, RawTensor)] = []
        let summary = try run(plan) { tensors.append(($0, $1)) }
        let meta = try MergeProvenance.metadata(plan: plan, summary: summary, tensorHash: tensorHash) + extra
        try SafetensorsWriter.write(tensors: tensors, metadata: meta, to: path)
        return summary
    }
}

/// The checked plan: sources agree on names, shapes and dtypes; parameters are known to the method.
final class MergeJob {
    let plan: MergePlan
    let type: any MergeMethod.Type
    let names: [String]
    let floatTensorNames: [String]
    let positions: LayerPositions
    let isBase: [Bool]
    /// Tensors that no model's Fisher covers (see init).
    let withoutFisher: Set<String>

    init(plan: MergePlan, type: any MergeMethod.Type) throws {
        self.plan = plan
        self.type = type
        guard !plan.models.isEmpty else {
            throw TesseraError(.usage, "\(type.name): no models to merge", hint: "list at least one model")
        }
        if type.baseUse == .required && plan.base == nil {
            throw TesseraError(.usage, "\(type.name) needs a base model", hint: "set base_model (the model the task vectors are taken from)")
        }
        if type.needsFisher, let i = plan.models.firstIndex(where: { $0.fisher == nil }) {
            throw TesseraError(.usage, "\(type.name): model '\(plan.models[i].name)' has no Fisher",
                               hint: "give every model a diagonal Fisher, in a config as parameters: {fisher: PATH}")
        }
        isBase = plan.models.indices.map { plan.isBase($0) }
        // Unknown parameters fail before any tensor is read.
        _ = try MergeParameters.resolve(plan.parameters, definitions: type.globalParameters, tensor: "", layerPosition: 0,
                                        method: type.name, scope: "global")
        for m in plan.models {
            _ = try MergeParameters.resolve(m.parameters, definitions: type.modelParameters, tensor: "", layerPosition: 0,
                                            method: type.name, scope: "model '\(m.name)'")
        }
        let reference = plan.base ?? plan.models[0]
        names = reference.source.tensorNames
        let nameSet = Set(names)
        var sources: [MergeInputModel] = plan.models
        if let b = plan.base { sources.insert(b, at: 0) }
        for s in sources where s.source !== reference.source {
            if let missing = names.first(where: { s.source.tensorInfo($0) == nil }) {
                throw TesseraError(.notFound, "tensor '\(missing)' is in '\(reference.name)' but missing from '\(s.name)'",
                                   hint: "merge checkpoints of the same architecture")
            }
            if let extra = s.source.tensorNames.first(where: { !nameSet.contains($0) }) {
                throw TesseraError(.notFound, "tensor '\(extra)' is in '\(s.name)' but missing from '\(reference.name)'",
                                   hint: "merge checkpoints of the same architecture")
            }
        }
        // A tensor no model has a Fisher for is a buffer the Fisher does not cover (GPT-2's causal masks
        // `h.N.attn.bias`, which `tessera fisher` does not estimate): it merges only where every model holds the same
        // values. A Fisher missing from some models only is an error.
        var lacking = Set<String>()
        if type.needsFisher {
            for n in names {
                let without = plan.models.filter { $0.fisher?.tensorInfo(n) == nil }
                if without.count == plan.models.count { lacking.insert(n); continue }
                if let m = without.first, let f = m.fisher {
                    throw TesseraError(.notFound, "tensor '\(n)' has no Fisher in '\(m.fisherName ?? f.sourceName)' (model '\(m.name)')",
                                       hint: "estimate the Fisher for every tensor of the model")
                }
            }
        }
        withoutFisher = lacking
        positions = LayerPositions(tensorNames: names)
        floatTensorNames = names.filter { n in reference.source.tensorInfo(n).map { MergeJob.isMergeable($0.dtype) } ?? false }
    }

    /// The tensor's t for gradients: the plan's own table (slices), else from the names.
    func position(_ name: String) -> Double { plan.layerPositions?[name] ?? positions.position(name) }

    /// The name a model's parameter filters see: the tensor's name in that model (mergekit filters each input's
    /// parameters by the input tensor's name, which a slice's renumbering changes).
    func inputName(_ m: MergeInputModel, _ name: String) -> String {
        (((m.source as? VocabularyRemappedSource)?.inner ?? m.source) as? LayerSliceSource)?.originalName(name) ?? name
    }

    static func isMergeable(_ d: DType) -> Bool { [.f32, .f16, .bf16, .f64].contains(d) }

    /// What mergekit writes: `out_dtype`, else the method's result dtype (`resultDType`; not for a plan that
    /// `keepsLoadedDType`), else the merge dtype, else what it loaded.
    func outputDType(_ name: String) -> DType {
        if let d = plan.outDType { return d }
        if !plan.keepsLoadedDType, let d = type.resultDType(computeDType: computeDType(name), nonBaseModels: nonBaseModels) { return d }
        if let d = plan.dtype { return d }
        let loaded = loadedDType(name)
        return MergeJob.isMergeable(loaded) ? loaded : .f32
    }

    /// The dtype mergekit holds a tensor in without a `dtype:`: what it loaded, promoted across the inputs (base
    /// included) as torch promotes floats: one dtype stays itself; two different ones give float32 (bfloat16 with
    /// float16 too), or float64 if one is float64.
    func loadedDType(_ name: String) -> DType {
        var sources: [MergeInputModel] = plan.models
        if let b = plan.base { sources.append(b) }
        var seen: [DType] = []
        for s in sources {
            if let d = s.source.tensorInfo(name)?.dtype, !seen.contains(d) { seen.append(d) }
        }
        guard seen.count > 1 else { return seen.first ?? .f32 }
        return seen.contains(.f64) ? .f64 : .f32
    }

    /// mergekit's compute dtype: the config's `dtype`, else what it loaded (`loadedDType`). float64 is computed in
    /// float32 here (mergekit would use float64).
    func computeDType(stored: DType) -> DType {
        let d = plan.dtype ?? stored
        return d == .f16 || d == .bf16 ? d : .f32
    }

    func computeDType(_ name: String) -> DType {
        computeDType(stored: loadedDType(name))
    }

    /// The dtype the method's result is in before `out_dtype` converts it: the compute dtype, unless the method's
    /// ops promote it (`MergeMethod.resultDType`).
    func resultDType(_ name: String) -> DType {
        let compute = computeDType(name)
        return type.resultDType(computeDType: compute, nonBaseModels: nonBaseModels) ?? compute
    }

    /// The listed models that are not the base model.
    var nonBaseModels: Int { isBase.filter { !$0 }.count }

    func globalParameters(_ name: String) throws -> MergeParameters {
        try MergeParameters.resolve(plan.parameters, definitions: type.globalParameters, tensor: name,
                                    layerPosition: position(name), method: type.name, scope: "global")
    }

    /// Integer and other non-float tensors (position ids, masks) are not merged: taken as they are when every input
    /// agrees byte for byte, an error otherwise.
    func nonFloatPassthrough(_ name: String) throws -> RawTensor? {
        let reference = plan.base ?? plan.models[0]
        guard let info = reference.source.tensorInfo(name), !MergeJob.isMergeable(info.dtype) else { return nil }
        let raw = try reference.source.rawTensor(name)
        for m in plan.models where m.source !== reference.source {
            let other = try m.source.rawTensor(name)
            guard other.dtype == raw.dtype, other.shape == raw.shape, other.bytes == raw.bytes else {
                throw TesseraError(.unsupported, "tensor '\(name)' is \(info.dtype.rawValue) and differs between '\(reference.name)' and '\(m.name)'; non-float tensors cannot be merged",
                                   hint: "make the inputs agree on this tensor")
            }
        }
        return raw
    }

    /// The model the plan's tensor names and shapes come from: the base, else the first model.
    var reference: MergeInputModel { plan.base ?? plan.models[0] }

    /// The file mapping of a tensor `passthrough` takes unchanged, or nil when the tensor must go through the merge.
    /// Unchanged means: one model and no base, no `scale` for this tensor, float32 stored, computed and written (the
    /// merge would return the stored values as they are). Copying such a tensor into an array only to write the
    /// array out was most of a slices merge's work: the output is written straight from the input file's pages.
    func unchangedMapping(_ name: String) throws -> MappedFloat32? {
        guard type is PassthroughMerge.Type, plan.base == nil, plan.models.count == 1,
              plan.dtype == nil || plan.dtype == .f32 else { return nil }
        let m = plan.models[0]
        guard let info = m.source.tensorInfo(name), info.dtype == .f32,
              outputDType(name) == .f32, computeDType(name) == .f32 else { return nil }
        let parameters = try MergeParameters.resolve(m.parameters, definitions: type.modelParameters, tensor: inputName(m, name),
                                                     layerPosition: position(name), method: type.name, scope: "model '\(m.name)'")
        guard !parameters.has("scale") else { return nil }
        _ = try globalParameters(name)  // resolved as the merge would, for the same errors
        guard let source = m.source as? Float32Mapping else { return nil }
        return try source.mapFloat32(name)
    }

    /// One tensor of every model for a method that reads views: mapped where the source can map it (no copy, no
    /// fresh memory), read into an array otherwise. Nil for a tensor the plan does not merge as floats.
    func loadViews(_ name: String) throws -> ViewedInput? {
        let referenceInput = plan.base ?? plan.models[0]
        let info = try referenceInput.source.requireInfo(name)
        guard MergeJob.isMergeable(info.dtype) else { return nil }
        let reference = (name: referenceInput.name, dtype: info.dtype, shape: info.shape)
        let t = position(name)
        var storage: [ViewedInput.Storage] = []
        var modelParameters: [MergeParameters] = []
        for (i, m) in plan.models.enumerated() {
            if let j = plan.models[..<i].firstIndex(where: { $0.source === m.source }) {
                storage.append(storage[j])
            } else {
                try check(m, name, reference: reference)
                if let source = m.source as? Float32Mapping, let mapped = try source.mapFloat32(name) {
                    storage.append(.mapped(mapped))
                } else {
                    storage.append(.array(try load(m, name, reference: reference)))
                }
            }
            modelParameters.append(try MergeParameters.resolve(m.parameters, definitions: type.modelParameters, tensor: inputName(m, name),
                                                               layerPosition: t, method: type.name, scope: "model '\(m.name)'"))
        }
        // The base, last, for a method that uses it (mapped like the models; shared with a model of the same source).
        var hasBase = false
        if type.baseUse != .ignored, let b = plan.base {
            if let j = plan.models.firstIndex(where: { $0.source === b.source }) {
                storage.append(storage[j])
            } else {
                try check(b, name, reference: reference)
                if let source = b.source as? Float32Mapping, let mapped = try source.mapFloat32(name) {
                    storage.append(.mapped(mapped))
                } else {
                    storage.append(.array(try load(b, name, reference: reference)))
                }
            }
            hasBase = true
        }
        return ViewedInput(name: name, shape: info.shape, storage: storage, modelParameters: modelParameters,
                           parameters: try globalParameters(name), hasBase: hasBase, isBaseModel: isBase)
    }

    /// The tensor exists in the input with the reference's shape (and dtype, unless the plan converts).
    private func check(_ input: MergeInputModel, _ name: String, reference: (name: String, dtype: DType, shape: [Int])) throws {
        guard let info = input.source.tensorInfo(name) else {
            throw TesseraError(.notFound, "tensor '\(name)' is missing from '\(input.name)'", hint: "merge checkpoints of the same architecture")
        }
        guard info.shape == reference.shape else {
            throw TesseraError(.shapeMismatch, "tensor '\(name)' has shape \(info.shape) in '\(input.name)' but \(reference.shape) in '\(reference.name)'",
                               hint: "merge checkpoints of the same architecture")
        }
        // Different float dtypes are promoted (`loadedDType`), as mergekit promotes them; a non-float input among
        // float ones cannot be merged.
        if info.dtype != reference.dtype && !MergeJob.isMergeable(info.dtype) {
            throw TesseraError(.shapeMismatch, "tensor '\(name)' is \(info.dtype.rawValue) in '\(input.name)' but \(reference.dtype.rawValue) in '\(reference.name)'",
                               hint: "merge checkpoints whose tensors are floats")
        }
    }

    private func load(_ input: MergeInputModel, _ name: String, reference: (name: String, dtype: DType, shape: [Int]),
                      lending lent: [String: UnsafeRawBufferPointer] = [:]) throws -> [Float] {
        try check(input, name, reference: reference)
        var values: [Float]
        if !lent.isEmpty, let sharing = input.source as? DeltaBaseSharing, let v = try sharing.readFloat32(name, lending: lent) {
            values = v
        } else if let direct = input.source as? Float32Reading, let v = try direct.readFloat32(name) {
            values = v
        } else {
            values = try FloatCodec.decode(try input.source.rawTensor(name), name: "\(input.name): \(name)")
        }
        if let d = plan.dtype { FloatCodec.quantize(&values, to: d) }
        return values
    }

    /// Large tensors of several inputs are read at the same time, one reader per input: reading is a copy out of the
    /// page cache (files) or a decompression (the object store), which would otherwise run one input after another
    /// on the merging thread. Only sources that allow concurrent reads take part (the base, when the method needs it,
    /// and each distinct model); the others are read in order by `loadInput`. Keys: model index, or -1 for the base.
    private func loadConcurrently(_ name: String, reference: (name: String, dtype: DType, shape: [Int]), needsBase: Bool) throws -> [Int: [Float]] {
        let large = (elementCount(reference.shape) ?? 0) >= 1 << 20
        var inputs: [(key: Int, model: MergeInputModel)] = []
        if needsBase, let b = plan.base, b.source.allowsConcurrentReads { inputs.append((-1, b)) }
        for (i, m) in plan.models.enumerated() where !isBase[i] && m.source.allowsConcurrentReads
            && !plan.models[..<i].contains(where: { $0.source === m.source }) {
            inputs.append((i, m))
        }
        guard inputs.count >= 2 else { return [:] }
        if let shared = try loadSharingTheBase(name, reference: reference, inputs: inputs, concurrently: large) { return shared }
        guard large else { return [:] }
        let values = try read(name, from: inputs.map(\.model), reference: reference, concurrently: true)
        var loaded: [Int: [Float]] = [:]
        for (k, input) in inputs.enumerated() { loaded[input.key] = values[k] }
        return loaded
    }

    /// The tensor `name` of each of `models`, read side by side (`concurrently`: one reader per model, each a
    /// different source that allows concurrent reads, into its own slot) or one after another, each decoding against
    /// `lent` where its value is stored against one of those objects.
    private func read(_ name: String, from models: [MergeInputModel], reference: (name: String, dtype: DType, shape: [Int]),
                      concurrently: Bool, lending lent: [String: UnsafeRawBufferPointer] = [:]) throws -> [[Float]] {
        var results = [Result<[Float], Error>?](repeating: nil, count: models.count)
        results.withUnsafeMutableBufferPointer { slots in
            let out = SharedMutablePointer(slots.baseAddress!)
            let job = UncheckedSendable(self), work = UncheckedSendable((models, lent))
            let readOne: @Sendable (Int) -> Void = { k in
                let (models, lent) = work.value
                out[k] = Result { try job.value.load(models[k], name, reference: reference, lending: lent) }
            }
            if concurrently {
                DispatchQueue.concurrentPerform(iterations: models.count, execute: readOne)
            } else {
                for k in models.indices { readOne(k) }
            }
        }
        return try results.map { try $0!.get() }
    }

    /// `loadConcurrently` when models are stored as deltas against the base's value of this tensor (fine-tunes
    /// committed after their base, read from the object store): the base is read first, alone, and the models are
    /// then decoded against its values, side by side, instead of each decoding the base's object again (two of
    /// three decodes of every base tensor in a merge of two fine-tunes). Nil when no model is stored that way, or the
    /// base's values as loaded are not its stored bytes (a merge dtype other than float32). Small tensors are read
    /// one after another (`concurrently` false).
    private func loadSharingTheBase(_ name: String, reference: (name: String, dtype: DType, shape: [Int]),
                                    inputs: [(key: Int, model: MergeInputModel)], concurrently: Bool) throws -> [Int: [Float]]? {
        guard plan.dtype == nil || plan.dtype == .f32, let lender = inputs.firstIndex(where: { $0.key == -1 }),
              let base = inputs[lender].model.source as? DeltaBaseSharing, inputs[lender].model.source.tensorInfo(name)?.dtype == .f32,
              let baseObject = base.storedObject(name)?.id else { return nil }
        let others = inputs.indices.filter { $0 != lender }
        let borrows = { (k: Int) in (inputs[k].model.source as? DeltaBaseSharing)?.storedObject(name)?.bases.contains(baseObject) == true }
        guard others.contains(where: borrows) else { return nil }
        let baseValues = try load(inputs[lender].model, name, reference: reference)
        let values = try baseValues.withUnsafeBytes { bytes in
            try read(name, from: others.map { inputs[$0].model }, reference: reference, concurrently: concurrently, lending: [baseObject: bytes])
        }
        var loaded: [Int: [Float]] = [inputs[lender].key: baseValues]
        for (j, k) in others.enumerated() { loaded[inputs[k].key] = values[j] }
        return loaded
    }

    /// Loads one tensor of every input (each source once), with parameters resolved for it.
    func loadInput(_ name: String) throws -> TensorMergeInput {
        let referenceInput = plan.base ?? plan.models[0]
        let info = try referenceInput.source.requireInfo(name)
        let reference = (name: referenceInput.name, dtype: info.dtype, shape: info.shape)
        let t = position(name)
        let needsBase = plan.base != nil && (type.baseUse != .ignored || isBase.contains(true))
        let preloaded = try loadConcurrently(name, reference: reference, needsBase: needsBase)
        var base: [Float]? = nil
        if let b = plan.base, needsBase {
            base = try preloaded[-1] ?? load(b, name, reference: reference)
        }
        var models: [[Float]] = []
        var heldElsewhere: [Bool] = []
        var modelParameters: [MergeParameters] = []
        for (i, m) in plan.models.enumerated() {
            if isBase[i], let base {
                models.append(base) // shares storage with the base (copy on write)
                heldElsewhere.append(true)
            } else if let j = plan.models[..<i].firstIndex(where: { $0.source === m.source }) {
                models.append(models[j])
                heldElsewhere.append(true)
            } else if let values = preloaded[i] {
                models.append(values)
                heldElsewhere.append(false)
            } else {
                models.append(try load(m, name, reference: reference))
                heldElsewhere.append(false)
            }
            modelParameters.append(try MergeParameters.resolve(m.parameters, definitions: type.modelParameters, tensor: inputName(m, name),
                                                               layerPosition: t, method: type.name, scope: "model '\(m.name)'"))
        }
        var fishers: [[Float]]? = nil
        if type.needsFisher && !withoutFisher.contains(name) {
            fishers = try plan.models.map { m in
                let f = m.fisher!
                let fi = try f.requireInfo(name)
                guard fi.shape == info.shape else {
                    throw TesseraError(.shapeMismatch, "tensor '\(name)' has shape \(fi.shape) in the Fisher of '\(m.name)' but \(info.shape) in the model",
                                       hint: "use the Fisher estimated for this model")
                }
                return try FloatCodec.decode(try f.rawTensor(name), name: "\(m.fisherName ?? f.sourceName): \(name)")
            }
        }
        var input = TensorMergeInput(name: name, shape: info.shape, base: base, models: models, isBaseModel: isBase,
                                     modelParameters: modelParameters, parameters: try globalParameters(name), fishers: fishers)
        input.computeDType = computeDType(name)
        input.heldElsewhere = heldElsewhere
        return input
    }
}

/// One tensor of every model, mapped or read, for `MergeMethod.merge(views:)`.
struct ViewedInput {
    enum Storage {
        case mapped(MappedFloat32)
        case array([Float])
    }
    let name: String
    let shape: [Int]
    let storage: [Storage]
    let modelParameters: [MergeParameters]
    let parameters: MergeParameters
    /// Whether the last storage is the base's (the others are the models', in order).
    var hasBase = false
    var isBaseModel: [Bool] = []

    /// Calls `body` with views that stay valid for the call (arrays are pinned, mappings are held).
    func withViews<R>(_ body: (TensorMergeViews) throws -> R) throws -> R {
        try pinned(0, [], body)
    }

    private func pinned<R>(_ k: Int, _ views: [UnsafeBufferPointer<Float>], _ body: (TensorMergeViews) throws -> R) throws -> R {
        if k == storage.count {
            var v = TensorMergeViews(name: name, shape: shape, models: hasBase ? Array(views.dropLast()) : views,
                                     modelParameters: modelParameters, parameters: parameters)
            v.base = hasBase ? views.last : nil
            v.isBaseModel = isBaseModel
            return try body(v)
        }
        switch storage[k] {
        case .mapped(let m): return try pinned(k + 1, views + [m.values], body)
        case .array(let a): return try a.withUnsafeBufferPointer { try pinned(k + 1, views + [$0], body) }
        }
    }
}
