import TesseraCore
import TesseraIO
import TesseraMath

/// How a method uses the base model.
public enum BaseUse: String, Sendable {
    /// Merges task vectors θ_i − θ_base: a base is required.
    case required
    /// Ignores any base that is given (linear, Fisher, ours/theirs).
    case ignored
    /// Uses the base when one is given and merges without it otherwise (mergekit's `BasePolicy.OPTIONAL`: nuslerp,
    /// multislerp; karcher counts it as one more model).
    case optional
}

/// Everything a method sees for one tensor. Values are float32 (inputs are decoded and, when the plan sets a merge
/// `dtype`, first rounded to it, as mergekit does); methods may consume the arrays in place. Methods that reproduce
/// mergekit's arithmetic in a 16-bit dtype round each op to `computeDType`.
public struct TensorMergeInput: Sendable {
    /// The tensor's name, for errors and for keying random draws.
    public var name: String
    public var shape: [Int]
    /// The base model's tensor (nil when no base is given).
    public var base: [Float]?
    /// One array per listed model, in config order. An entry whose `isBaseModel` is true is the base model listed
    /// again (mergekit lists it among the models for SLERP); task-vector methods skip it.
    public var models: [[Float]]
    public var isBaseModel: [Bool]
    /// Per-model parameters (weight, density, ...), resolved for this tensor.
    public var modelParameters: [MergeParameters]
    /// Global parameters (normalize, lambda, t, seed, ...), resolved for this tensor.
    public var parameters: MergeParameters
    /// Per-model diagonal Fisher tensors, for methods that declare `needsFisher`.
    public var fishers: [[Float]]?
    /// The dtype mergekit would compute this tensor in: the plan's `dtype`, else the inputs' stored dtype (mergekit
    /// then computes in what it loaded). Methods that follow mergekit's torch ops round each op's result to it when it
    /// is float16 or bfloat16 (`TorchRounding`); values arrive already rounded to it.
    public var computeDType: DType = .f32
    /// Per model: whether something outside this input still holds the model's array (the base, or another model slot
    /// reading the same source). Writing such an array in place would first copy it whole; `takeTaskVector` then
    /// writes the difference into new storage in one pass instead.
    public var heldElsewhere: [Bool] = []

    public init(name: String, shape: [Int], base: [Float]?, models: [[Float]], isBaseModel: [Bool]? = nil,
                modelParameters: [MergeParameters], parameters: MergeParameters, fishers: [[Float]]? = nil) {
        self.name = name
        self.shape = shape
        self.base = base
        self.models = models
        self.isBaseModel = isBaseModel ?? Array(repeating: false, count: models.count)
        self.modelParameters = modelParameters
        self.parameters = parameters
        self.fishers = fishers
    }

    public var elementCount: Int { elementCount(shape) }
    private func elementCount(_ s: [Int]) -> Int { TesseraCore.elementCount(s) ?? 0 }

    /// Indices of the models that are not the base model.
    public var nonBaseIndices: [Int] { models.indices.filter { !isBaseModel[$0] } }

    /// Model `i`'s task vector θ_i − θ_base, made in the model's own array (which this input gives up).
    mutating func takeTaskVector(_ i: Int, base: [Float], method: String) throws -> [Float] {
        var d = models[i]
        models[i] = []
        guard d.count == base.count else {
            throw TesseraError(.shapeMismatch, "\(method): tensor '\(name)' of model \(i) has \(d.count) values, the base has \(base.count)")
        }
        if i < heldElsewhere.count && heldElsewhere[i] {
            let held = d
            return [Float](unsafeUninitializedCapacity: held.count) { out, initialized in
                held.withUnsafeBufferPointer { a in base.withUnsafeBufferPointer { b in MergeKernels.difference(out, a, b) } }
                initialized = held.count
            }
        }
        d.withUnsafeMutableBufferPointer { dp in base.withUnsafeBufferPointer { MergeKernels.subtract(dp, $0) } }
        return d
    }

    func requireBase(_ method: String) throws -> [Float] {
        guard let base else {
            throw TesseraError(.usage, "\(method) needs a base model (tensor '\(name)')", hint: "set base_model in the merge config")
        }
        return base
    }
}

/// One tensor of every model as read-only views, for methods that only read their inputs (`readsViews`): file
/// inputs are mapped, not copied. The views are valid only during `merge(views:)`.
public struct TensorMergeViews {
    public var name: String
    public var shape: [Int]
    /// One view per listed model, in config order (a model listed twice, or the base listed as a model, shares its view).
    public var models: [UnsafeBufferPointer<Float>]
    public var modelParameters: [MergeParameters]
    public var parameters: MergeParameters
    /// The base model's view, for methods that use the base (`baseUse` not `.ignored`) when the plan has one.
    public var base: UnsafeBufferPointer<Float>? = nil
    /// Which listed models are the base model itself (as `TensorMergeInput.isBaseModel`).
    public var isBaseModel: [Bool] = []

    public var elementCount: Int { TesseraCore.elementCount(shape) ?? 0 }
}

/// A merge method: merges one tensor at a time. Methods are stateless apart from what `prepare` gathers in a pass
/// over the whole model (the TIES paper's model-wide trim threshold, Fisher norms), so tensors can stream through.
public protocol MergeMethod: Sendable {
    /// mergekit's name for the method (or Tessera's for `fisher`, `ours`, `theirs`, `base`).
    static var name: String { get }
    /// One line for `tessera merge --help` and the docs.
    static var summary: String { get }
    static var baseUse: BaseUse { get }
    static var globalParameters: [ParameterDefinition] { get }
    static var modelParameters: [ParameterDefinition] { get }
    /// Whether each model needs a diagonal Fisher source.
    static var needsFisher: Bool { get }

    init()

    /// An optional pass over the whole model before merging (default: nothing).
    mutating func prepare(_ context: MergePreparation) throws

    /// Merges one tensor; returns float32 values of `input.shape`.
    func merge(_ input: inout TensorMergeInput) throws -> [Float]

    /// Whether the method can merge from read-only views (`merge(views:)`); the driver then maps file inputs instead
    /// of reading them into arrays. Only for methods that never write to their inputs; a method that uses the base
    /// gets it as a view too (`TensorMergeViews.base`).
    static var readsViews: Bool { get }

    /// Merges one tensor from read-only views (methods with `readsViews`); the result must equal `merge(_:)`'s.
    func merge(views: TensorMergeViews) throws -> [Float]

    /// Extra provenance entries (DARE records its seed and generator).
    func provenance(parameters: MergeParameters) -> [(String, String)]

    /// The dtype of the method's result when it computes in `computeDType` with `nonBaseModels` models besides the
    /// base: mergekit writes a method's result in the dtype its torch ops leave it in unless the config sets
    /// `out_dtype`, and a few methods' ops promote a 16-bit merge to float32 (a float32 mask or coefficient tensor).
    /// nil (the default): the compute dtype.
    static func resultDType(computeDType: DType, nonBaseModels: Int) -> DType?
}

extension MergeMethod {
    public static var needsFisher: Bool { false }
    public static var readsViews: Bool { false }
    public func merge(views: TensorMergeViews) throws -> [Float] {
        throw TesseraError(.unsupported, "\(Self.name) cannot merge from views (tensor '\(views.name)')")
    }
    public mutating func prepare(_ context: MergePreparation) throws {}
    public func provenance(parameters: MergeParameters) -> [(String, String)] { [] }
    public static func resultDType(computeDType: DType, nonBaseModels: Int) -> DType? { nil }
}

/// What `prepare` may read: tensor names, and each tensor's full input (loaded on demand, one at a time).
public struct MergePreparation {
    public let tensorNames: [String]
    public let loadInput: (String) throws -> TensorMergeInput
    public init(tensorNames: [String], loadInput: @escaping (String) throws -> TensorMergeInput) {
        self.tensorNames = tensorNames
        self.loadInput = loadInput
    }
}

/// Name → method. mergekit's names for the methods it has, Tessera's for the others.
public enum MergeRegistry {
    public static let methods: [any MergeMethod.Type] = [
        LinearMerge.self, TaskArithmeticMerge.self, TiesMerge.self, DareLinearMerge.self, DareTiesMerge.self,
        BreadcrumbsMerge.self, BreadcrumbsTiesMerge.self, SlerpMerge.self, FisherMerge.self,
        TakeOursMerge.self, TakeTheirsMerge.self, TakeBaseMerge.self,
        // mergekit's other methods (issue 11), one file each in Methods/.
        ModelStockMerge.self, DellaMerge.self, DellaLinearMerge.self, SceMerge.self, NearswapMerge.self,
        ArceeFusionMerge.self, RamMerge.self, RamPlusTLMerge.self, PassthroughMerge.self,
        NuSlerpMerge.self, MultiSlerpMerge.self, KarcherMerge.self,
    ]

    public static var names: [String] { methods.map { $0.name } }

    public static func method(named name: String) throws -> any MergeMethod.Type {
        if let m = methods.first(where: { $0.name == name }) { return m }
        throw TesseraError(.invalidParameter, "unknown merge method '\(name)'",
                           hint: "known methods: " + names.joined(separator: ", "))
    }
}
