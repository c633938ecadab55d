import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// Merged checkouts of a library of LoRA experts, defined on each module's ΔWᵢ = sᵢ·Bᵢ·Aᵢ (never on A and B
/// separately, which is not averaging ΔW):
/// - `average`: ΔW = (1/N)·Σᵢ ΔWᵢ over the N experts;
/// - `weightedAverage`: ΔW = Σᵢ wᵢ·ΔWᵢ / Σᵢ wᵢ (or Σᵢ wᵢ·ΔWᵢ with `normalize` off, which is PEFT's
///   `add_weighted_adapter` cat/svd);
/// - `ties`: mergekit's TIES (the existing `TiesMerge`, variant mergekit) with the ΔWᵢ as task vectors: per module,
///   each ΔWᵢ trimmed to k = max(1, ⌊density·n⌋) entries, weights applied before the sign vote (sum; an exact zero
///   elects +), agreeing entries summed and divided by the sum of the agreeing weights (`normalize`), times λ.
///   It equals mergekit's ties of the models base + ΔWᵢ over the base (up to the rounding of (base + ΔWᵢ) − base).
/// A module some experts do not adapt counts as ΔW = 0 for them: it still counts in the average's N and Σw, and in
/// TIES its zeros never agree with the elected sign. Experts must agree on each shared module's shape and layout
/// (fan_in_fan_out, embedding); whole saved tensors (modules_to_save) are refused, as they are not ΔW.
///
/// Outputs: `checkpoint(base:)`, the base with every merged ΔW added (a `TensorSource` computing one module at a
/// time, for `CheckpointOutputWriter`), and `adapter(rank:)`, a new PEFT adapter whose factors are the best rank-r
/// approximation of each merged ΔW (SVD, Eckart–Young), r = lora_alpha = rank (scaling 1), zero-padded where a
/// module has fewer than r components, target_modules the union of the experts'.
public final class LibraryMerge {
    public enum Method: String, Sendable, CaseIterable {
        case average
        case weightedAverage = "weighted"
        case ties
    }

    public struct Options: Sendable {
        public var method: Method
        /// One weight per expert: required by `weightedAverage`, optional for `ties` (default 1 each), refused by
        /// `average`.
        public var weights: [Double]?
        /// Weighted average: divide by Σw. TIES: divide by the agreeing weights' sum (mergekit's default).
        public var normalize: Bool
        /// TIES: the fraction of each ΔW's entries kept, in (0, 1].
        public var density: Double
        /// TIES: the scale of the merged ΔW.
        public var lambda: Double

        public init(method: Method, weights: [Double]? = nil, normalize: Bool = true, density: Double = 1, lambda: Double = 1) {
            self.method = method
            self.weights = weights
            self.normalize = normalize
            self.density = density
            self.lambda = lambda
        }
    }

    /// One module of the union of the experts' modules.
    public struct Module: Sendable {
        public var name: String
        /// The base tensor it changes.
        public var target: String { name + ".weight" }
        public var inFeatures: Int
        public var outFeatures: Int
        /// ΔW is stored transposed in the base ((B·A)ᵀ: fan_in_fan_out layers, embeddings).
        public var transpose: Bool
        public var isEmbedding: Bool
        /// The shape of ΔW as the base stores the weight.
        public var deltaShape: [Int] { transpose ? [inFeatures, outFeatures] : [outFeatures, inFeatures] }
        /// The experts adapting it: index into `experts`, and their module.
        public var terms: [(expert: Int, module: LoRAAdapter.Module)]
    }

    public let experts: [AdapterFolder]
    public let options: Options
    /// The union of the experts' modules, in order of first appearance.
    public let modules: [Module]
    /// Per expert, the weight the method uses.
    public let weights: [Double]

    public init(experts: [AdapterFolder], options: Options) throws {
        guard !experts.isEmpty else {
            throw TesseraError(.invalidParameter, "a library merge needs at least one expert", hint: "add experts to the library")
        }
        let n = experts.count
        switch options.method {
        case .average:
            guard options.weights == nil else {
                throw TesseraError(.usage, "average takes no weights (it weighs every expert 1/\(n))", hint: "use the weighted method to give weights")
            }
            weights = Array(repeating: 1, count: n)
        case .weightedAverage:
            guard let w = options.weights else {
                throw TesseraError(.usage, "the weighted average needs one weight per expert", hint: "give \(n) weights")
            }
            weights = w
        case .ties:
            weights = options.weights ?? Array(repeating: 1, count: n)
            guard options.density.isFinite, options.density > 0, options.density <= 1 else {
                throw TesseraError(.invalidParameter, "ties: density \(options.density) is outside (0, 1]", hint: "density is the fraction of each ΔW kept, e.g. 0.5")
            }
            guard options.lambda.isFinite else {
                throw TesseraError(.invalidParameter, "ties: lambda \(options.lambda) is not finite", hint: "lambda scales the merged ΔW (default 1)")
            }
        }
        guard weights.count == n else {
            throw TesseraError(.invalidParameter, "\(weights.count) weights for \(n) experts", hint: "give one weight per expert")
        }
        guard weights.allSatisfy(\.isFinite) else {
            throw TesseraError(.invalidParameter, "the experts' weights must be finite numbers", hint: "check the weights")
        }
        if options.method == .weightedAverage, options.normalize, abs(weights.reduce(0, +)) < 1e-12 {
            throw TesseraError(.invalidParameter, "the weights sum to 0, so the weighted average is undefined",
                               hint: "give weights with a non-zero sum, or turn normalisation off for a plain weighted sum")
        }
        let fanInFanOut = experts[0].adapter.config.fanInFanOut
        for e in experts {
            if e.adapter.config.fanInFanOut != fanInFanOut {
                throw TesseraError(.invalidParameter, "\(e.name) and \(experts[0].name) disagree on fan_in_fan_out", hint: "merge experts of the same base model")
            }
            if let r = e.adapter.replacements.first {
                throw TesseraError(.unsupported, "\(e.name) saves '\(r.tensor)' whole (modules_to_save), which is not a LoRA ΔW",
                                   hint: "library merges combine LoRA experts; merge whole-tensor experts with tessera merge")
            }
        }
        var modules: [Module] = []
        var index: [String: Int] = [:]
        for (i, e) in experts.enumerated() {
            for m in e.adapter.modules {
                if let k = index[m.name] {
                    let first = modules[k]
                    guard m.inFeatures == first.inFeatures, m.outFeatures == first.outFeatures, m.transpose == first.transpose, m.isEmbedding == first.isEmbedding else {
                        throw TesseraError(.shapeMismatch, "\(e.name): module '\(m.name)' has ΔW \(m.deltaShape), but \(experts[first.terms[0].expert].name)'s is \(first.deltaShape)",
                                           hint: "merge experts of the same base model")
                    }
                    modules[k].terms.append((i, m))
                } else {
                    let (count, overflow) = m.inFeatures.multipliedReportingOverflow(by: m.outFeatures)
                    guard !overflow, count <= 1 << 31 else {
                        throw TesseraError(.shapeMismatch, "\(e.name): module '\(m.name)' has a ΔW of \(m.outFeatures) × \(m.inFeatures), too large to merge",
                                           hint: "the adapter file is malformed")
                    }
                    index[m.name] = modules.count
                    modules.append(Module(name: m.name, inFeatures: m.inFeatures, outFeatures: m.outFeatures, transpose: m.transpose,
                                          isEmbedding: m.isEmbedding, terms: [(i, m)]))
                }
            }
        }
        self.experts = experts
        self.options = options
        self.modules = modules
    }

    /// The linear methods' coefficient per expert: 1/N, wᵢ/Σw, or wᵢ.
    var linearCoefficients: [Double] {
        switch options.method {
        case .average: return Array(repeating: 1 / Double(experts.count), count: experts.count)
        case .weightedAverage:
            let total = options.normalize ? weights.reduce(0, +) : 1
            return weights.map { $0 / total }
        case .ties: return weights
        }
    }

    /// An expert's ΔW = s·B·A for a module, in the base's layout, float32.
    func expertDelta(_ module: Module, term: (expert: Int, module: LoRAAdapter.Module)) throws -> [Float] {
        let (a, b) = try experts[term.expert].factors(term.module)
        let m = term.module
        let product = LoRACombination.matmul(b, a, m: m.outFeatures, k: m.rank, n: m.inFeatures)
        let s = Float(m.scaling)
        return module.transpose ? Self.transposed(product, rows: m.outFeatures, cols: m.inFeatures, scale: s) : product.map { $0 * s }
    }

    static func transposed(_ x: [Float], rows: Int, cols: Int, scale: Float = 1) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        for i in 0..<rows { for j in 0..<cols { out[j * rows + i] = x[i * cols + j] * scale } }
        return out
    }

    /// The merged ΔW of a module, in the base's layout (`deltaShape`), float32.
    public func mergedDelta(_ module: Module) throws -> [Float] {
        let count = module.inFeatures * module.outFeatures
        switch options.method {
        case .average, .weightedAverage:
            let c = linearCoefficients
            var adapters: [LoRACombination.Adapter] = [], w: [Float] = []
            for t in module.terms {
                let (a, b) = try experts[t.expert].factors(t.module)
                adapters.append(try LoRACombination.Adapter(a: a, b: b, rank: t.module.rank, inFeatures: t.module.inFeatures,
                                                            outFeatures: t.module.outFeatures, scaling: Float(t.module.scaling)))
                w.append(Float(c[t.expert]))
            }
            let delta = try LoRACombination.deltaWeight(adapters, weights: w)
            return module.transpose ? Self.transposed(delta, rows: module.outFeatures, cols: module.inFeatures) : delta
        case .ties:
            var models = [[Float]](repeating: [Float](repeating: 0, count: count), count: experts.count)
            for t in module.terms { models[t.expert] = try expertDelta(module, term: t) }
            var input = TensorMergeInput(
                name: module.target, shape: module.deltaShape, base: [Float](repeating: 0, count: count), models: models,
                modelParameters: weights.map { MergeParameters(["weight": .number($0), "density": .number(options.density)]) },
                parameters: MergeParameters(["normalize": .bool(options.normalize), "lambda": .number(options.lambda),
                                             "consensus": .string("sum"), "ties_variant": .string(TiesMerge.Variant.mergekit.rawValue)]))
            return try TiesMerge().merge(&input)
        }
    }

    /// The merged library as a new PEFT adapter of rank `rank` (see the type's comment).
    public func adapter(rank: Int) throws -> AdapterOutput {
        let usable = modules.map { min($0.inFeatures, $0.outFeatures) }.max() ?? 0
        guard rank >= 1, rank <= max(usable, 1) else {
            throw TesseraError(.invalidParameter, "rank \(rank) is outside 1...\(usable), the ranks the library's modules can have",
                               hint: "choose a rank of at most \(usable)")
        }
        var tensors: [(String, [Float], [Int])] = []
        for module in modules {
            let outA: [Float], outB: [Float]
            if options.method == .ties {
                let merged = try mergedDelta(module)
                // Back to the B·A layout [d_out, d_in] the factors describe.
                let dW = module.transpose ? Self.transposed(merged, rows: module.inFeatures, cols: module.outFeatures) : merged
                let k = min(rank, module.outFeatures, module.inFeatures)
                let f = try LoRACombination.factorize(dW, outFeatures: module.outFeatures, inFeatures: module.inFeatures, rank: k)
                (outA, outB) = Self.padded(f, rank: rank)
            } else {
                // Σ cᵢ·sᵢ·Bᵢ·Aᵢ is a product of concatenated factors: AdapterMerge's factored SVD, no dense ΔW.
                let c = linearCoefficients
                let terms = module.terms.map { (experts[$0.expert], $0.module, c[$0.expert]) }
                var rng = SplitMix64(seed: 0)
                (outA, outB) = try AdapterMerge.combineModule(terms, combination: .svd, rank: rank,
                                                              options: AdapterCombinationOptions(combination: .svd, svdRank: rank), rng: &rng)
            }
            let first = module.terms[0].module
            let names = AdapterMerge.factorNames(first)
            tensors.append((names.a, outA, [rank, module.inFeatures]))
            tensors.append((names.b, outB, [module.outFeatures, rank]))
        }
        let config = AdapterMerge.combinedConfig(experts.map(\.adapter.config.json), rank: rank, targets: AdapterMerge.targetModules(experts))
        return AdapterOutput(config: config, tensors: tensors, rank: rank)
    }

    /// Factors of `f.rank` components in `rank`-wide storage (the rest zero).
    static func padded(_ f: LoRACombination.Factors, rank: Int) -> (a: [Float], b: [Float]) {
        let n = f.inFeatures, m = f.outFeatures
        var a = [Float](repeating: 0, count: rank * n), b = [Float](repeating: 0, count: m * rank)
        for r in 0..<f.rank { for j in 0..<n { a[r * n + j] = f.a[r * n + j] } }
        for o in 0..<m { for r in 0..<f.rank { b[o * rank + r] = f.b[o * f.rank + r] } }
        return (a, b)
    }

    /// The base with every merged ΔW added, computed one module at a time as tensors are read.
    public func checkpoint(base: TensorSource, name: String? = nil) throws -> LibraryMergedSource {
        try LibraryMergedSource(base: base, merge: self, name: name ?? "\(base.sourceName)+library(\(options.method.rawValue))")
    }
}

/// A base model with a library merge's ΔW added to the weights it adapts: W + ΔW in float32, rounded once to the
/// weight's dtype (as `LoRAAppliedSource` applies one adapter); every other tensor is the base's.
public final class LibraryMergedSource: TensorSource {
    public let base: TensorSource
    public let merge: LibraryMerge
    public let sourceName: String
    let modules: [String: LibraryMerge.Module]

    init(base: TensorSource, merge: LibraryMerge, name: String) throws {
        var modules: [String: LibraryMerge.Module] = [:]
        for m in merge.modules {
            guard let info = base.tensorInfo(m.target) else {
                throw TesseraError(.notFound, "the library adapts '\(m.target)', which the base model does not have", hint: "merge the library into the model its experts were trained on")
            }
            guard info.shape == m.deltaShape else {
                throw TesseraError(.shapeMismatch, "the library's ΔW of '\(m.target)' is \(m.deltaShape) but the weight is \(info.shape)",
                                   hint: "merge the library into the model its experts were trained on")
            }
            guard [.f32, .f16, .bf16].contains(info.dtype) else {
                throw TesseraError(.unsupported, "'\(m.target)' is \(info.dtype.rawValue): ΔW is added to float32, float16 or bfloat16 weights only",
                                   hint: "use a float checkpoint as the base")
            }
            modules[m.target] = m
        }
        self.base = base
        self.merge = merge
        self.sourceName = name
        self.modules = modules
    }

    public var tensorNames: [String] { base.tensorNames }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { base.tensorInfo(name) }
    public var metadata: [(String, String)] { base.metadata }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let m = modules[name] else { return try base.rawTensor(name) }
        let w = try base.rawTensor(name)
        var values = try FloatCodec.decode(w, name: "\(base.sourceName): \(name)")
        let delta = try merge.mergedDelta(m)
        guard values.count == delta.count, w.shape == m.deltaShape else {
            throw TesseraError(.shapeMismatch, "'\(name)' of \(base.sourceName) changed shape while being read (\(w.shape))", hint: "the base checkpoint is malformed")
        }
        for k in values.indices { values[k] += delta[k] }
        guard let out = try FloatCodec.encodeFinite(values, shape: w.shape, dtype: w.dtype) else {
            throw TesseraError(.invalidParameter, "adding the library's ΔW to '\(name)' overflows \(w.dtype.rawValue)", hint: "check the experts for huge or non-finite values")
        }
        return out
    }
}
