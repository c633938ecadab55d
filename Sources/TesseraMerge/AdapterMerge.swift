import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// A PEFT adapter folder read: its parsed config and factor pairs, and the weights file they are read from.
public struct AdapterFolder {
    public var adapter: LoRAAdapter
    public var tensors: TensorSource
    public var name: String
    /// adapter_config.json as read.
    public var configBytes: [UInt8]

    public init(configBytes: [UInt8], tensors: TensorSource, name: String) throws {
        adapter = try LoRAAdapter(configBytes: configBytes, tensors: tensors, name: name)
        self.configBytes = configBytes
        self.tensors = tensors
        self.name = name
    }

    /// The factors of one module as float32: A [r, d_in], B [d_out, r].
    public func factors(_ m: LoRAAdapter.Module) throws -> (a: [Float], b: [Float]) {
        let a = try tensors.rawTensor(m.aName), b = try tensors.rawTensor(m.bName)
        // The header said so when the adapter was read; a source that changed underneath must not index out of range.
        guard a.shape == [m.rank, m.inFeatures], b.shape == [m.outFeatures, m.rank] else {
            throw TesseraError(.shapeMismatch, "\(name): the LoRA factors of '\(m.name)' have shapes \(a.shape) and \(b.shape), not [\(m.rank), \(m.inFeatures)] and [\(m.outFeatures), \(m.rank)]",
                               hint: "the adapter file is malformed")
        }
        return (try FloatCodec.decode(a, name: "\(name): \(m.aName)"), try FloatCodec.decode(b, name: "\(name): \(m.bName)"))
    }

    /// The configured rank PEFT allocates for a combination: `r`, or the largest of `r` and `rank_pattern`'s values.
    /// It sizes the output, so a value no module of the adapter can have (above the largest factor rank and the
    /// largest min(d_out, d_in)) is refused rather than allocated.
    func configuredRank() throws -> Int {
        var r = adapter.config.rank
        for (key, v) in adapter.config.rankPattern {
            guard v.isFinite, v >= 1, v <= Double(1 << 30), v == v.rounded() else {
                throw TesseraError(.invalidParameter, "\(name): rank_pattern['\(key)'] = \(v) is not a rank", hint: "ranks are positive integers")
            }
            r = max(r, Int(v))
        }
        let usable = adapter.modules.map { max($0.rank, min($0.inFeatures, $0.outFeatures)) }.max() ?? 0
        guard r <= max(usable, 1) else {
            throw TesseraError(.invalidParameter, "\(name): r = \(r) is larger than any module of the adapter can use (at most \(usable))",
                               hint: "the adapter_config.json does not describe these weights")
        }
        for m in adapter.modules where m.rank > r {
            throw TesseraError(.shapeMismatch, "\(name): module '\(m.name)' has rank \(m.rank), above the configured r = \(r)",
                               hint: "the adapter_config.json does not describe these weights")
        }
        return r
    }

    /// ‖ΔW‖_F of a module (ΔW = s·B·A) without forming ΔW: ‖BA‖² = trace((BᵀB)(AAᵀ)), two r×r Gram matrices, in
    /// double precision.
    public func deltaNorm(_ m: LoRAAdapter.Module) throws -> Double {
        let (a, b) = try factors(m)
        return abs(m.scaling) * AdapterMerge.productNorm(a: a, b: b, rank: m.rank, inFeatures: m.inFeatures, outFeatures: m.outFeatures)
    }
}

/// How `add_weighted_adapter` combines adapters (PEFT 0.21's `combination_type`).
public enum AdapterCombination: String, CaseIterable, Sendable {
    case cat, linear, svd, ties
    case tiesSVD = "ties_svd"
    case dareLinear = "dare_linear"
    case dareTies = "dare_ties"
    case dareLinearSVD = "dare_linear_svd"
    case dareTiesSVD = "dare_ties_svd"
    case magnitudePrune = "magnitude_prune"
    case magnitudePruneSVD = "magnitude_prune_svd"

    /// PEFT applies these to A and B separately (with √|w·s| on each): not a combination of ΔW, lossy even for two
    /// equal adapters' sum (Σ√wᵢBᵢ · Σ√wᵢAᵢ has cross terms).
    public var isFactorWise: Bool { [.linear, .ties, .dareLinear, .dareTies, .magnitudePrune].contains(self) }
    /// Computed on ΔW and truncated to a rank by SVD.
    public var isSVD: Bool { rawValue.hasSuffix("svd") }
    var needsDensity: Bool { ![.cat, .linear, .svd].contains(self) }
    var isRandom: Bool { rawValue.hasPrefix("dare") }
}

/// The parameters of an adapter combination beyond the weights (PEFT's names in comments).
public struct AdapterCombinationOptions: Sendable {
    public var combination: AdapterCombination
    /// `svd_rank` (default: the largest input rank).
    public var svdRank: Int?
    /// `density`, the fraction kept by magnitude or random pruning.
    public var density: Double?
    /// `majority_sign_method`: sign election by the sum of values (`total`) or by the count of signs (`frequency`).
    public var majoritySignByFrequency: Bool
    /// DARE's random masks come from this seed (PEFT draws them from torch's generator: equal in distribution only).
    public var seed: UInt64

    public init(combination: AdapterCombination, svdRank: Int? = nil, density: Double? = nil, majoritySignByFrequency: Bool = false, seed: UInt64 = 0) {
        self.combination = combination
        self.svdRank = svdRank
        self.density = density
        self.majoritySignByFrequency = majoritySignByFrequency
        self.seed = seed
    }
}

/// An adapter computed by Tessera, ready to be written as a PEFT folder.
public struct AdapterOutput {
    /// adapter_config.json.
    public var config: JSONValue
    /// Tensors in PEFT's names (`base_model.model.MODULE.lora_A.weight`, ...), float32.
    public var tensors: [(name: String, values: [Float], shape: [Int])]
    public var rank: Int
    /// Tensors saved whole (`modules_to_save`), as they are.
    public var wholeTensors: [(name: String, raw: RawTensor)] = []
    /// The dtype the factors are written in.
    public var factorDType: DType = .f32

    public init(config: JSONValue, tensors: [(name: String, values: [Float], shape: [Int])], rank: Int) {
        self.config = config
        self.tensors = tensors
        self.rank = rank
    }

    /// adapter_config.json as bytes (indented, as PEFT writes it).
    public var configBytes: [UInt8] { Array((AdapterMerge.pretty(config) + "\n").utf8) }

    /// Every tensor of adapter_model.safetensors, in order: the factors, then the whole tensors.
    public func write(_ append: (String, RawTensor) throws -> Void) throws {
        for t in tensors {
            guard let raw = try FloatCodec.encodeFinite(t.values, shape: t.shape, dtype: factorDType) else {
                throw TesseraError(.invalidParameter, "'\(t.name)' does not fit \(factorDType.rawValue) (a value is not finite or overflows)",
                                   hint: "check the inputs for NaN or infinite values")
            }
            try append(t.name, raw)
        }
        for t in wholeTensors { try append(t.name, t.raw) }
    }
}

/// Adapter arithmetic as PEFT 0.21's `LoraModel.add_weighted_adapter` defines it, and the three-way merge of adapter
/// versions on ΔW:
/// - `cat`: exact, ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ as concatenated factors (A rows wᵢ·sᵢ·Aᵢ, B columns Bᵢ), rank Σ rᵢ;
/// - `svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`: the combination of the ΔWᵢ = sᵢBᵢAᵢ,
///   then its best rank-r approximation (A = Vᵀ[:r], B = U[:, :r]·Σ[:r]);
/// - `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: PEFT's factor-wise definitions (A and B combined
///   separately with weights √|wᵢsᵢ|), equal ranks only: named lossy modes, never a default.
/// The new config is the first adapter's with r = lora_alpha = the new rank (so scaling 1), target_modules the
/// union, no rank/alpha patterns; `use_rslora` is cleared (PEFT keeps it, which would scale the result by √r).
public enum AdapterMerge {
    public static func combine(_ inputs: [AdapterFolder], weights: [Double], options: AdapterCombinationOptions) throws -> AdapterOutput {
        guard inputs.count >= 1, inputs.count == weights.count else {
            throw TesseraError(.invalidParameter, "an adapter combination needs one weight per adapter (\(inputs.count) adapters, \(weights.count) weights)",
                               hint: "give --weights with one number per adapter")
        }
        guard weights.allSatisfy(\.isFinite) else {
            throw TesseraError(.invalidParameter, "adapter weights must be finite numbers", hint: "check --weights")
        }
        // PEFT: with one adapter only linear merging is defined.
        let combination = inputs.count == 1 ? AdapterCombination.linear : options.combination
        let ranks = try inputs.map { try $0.configuredRank() }
        let newRank: Int
        if combination == .cat {
            newRank = ranks.reduce(0, +)
        } else if combination.isSVD {
            newRank = options.svdRank ?? (ranks.max() ?? 1)
            guard newRank >= 1 else {
                throw TesseraError(.invalidParameter, "the svd rank must be at least 1 (got \(newRank))", hint: "e.g. --svd-rank 8")
            }
        } else {
            guard Set(ranks).count == 1 else {
                throw TesseraError(.invalidParameter, "\(combination.rawValue) combines factors and needs adapters of equal rank (ranks \(ranks.map(String.init).joined(separator: ", ")))",
                                   hint: "use --combination cat (exact) or svd, which work on ΔW")
            }
            newRank = ranks[0]
        }
        if combination.needsDensity {
            guard let d = options.density, d.isFinite, d >= 0 else {
                throw TesseraError(.invalidParameter, "\(combination.rawValue) needs a density ≥ 0 (got \(options.density.map { "\($0)" } ?? "none"))",
                                   hint: "e.g. --param density=0.5")
            }
        }
        let fanInFanOut = inputs[0].adapter.config.fanInFanOut
        if let other = inputs.first(where: { $0.adapter.config.fanInFanOut != fanInFanOut }) {
            throw TesseraError(.invalidParameter, "\(other.name) and \(inputs[0].name) disagree on fan_in_fan_out", hint: "combine adapters of the same model")
        }
        var rng = SplitMix64(seed: options.seed)
        var tensors: [(String, [Float], [Int])] = []
        for name in moduleNames(inputs) {
            var present: [(AdapterFolder, LoRAAdapter.Module, Double)] = []
            for (input, w) in zip(inputs, weights) { if let m = input.adapter.modules.first(where: { $0.name == name }) { present.append((input, m, w)) } }
            let first = present[0].1
            for (input, m, _) in present where m.inFeatures != first.inFeatures || m.outFeatures != first.outFeatures || m.isEmbedding != first.isEmbedding {
                throw TesseraError(.shapeMismatch, "\(input.name): module '\(name)' maps \(m.inFeatures) → \(m.outFeatures) features, \(present[0].0.name)'s \(first.inFeatures) → \(first.outFeatures)",
                                   hint: "combine adapters of the same base model")
            }
            let (a, b) = try combineModule(present, combination: combination, rank: newRank, options: options, rng: &rng)
            let names = factorNames(first)
            tensors.append((names.a, a, [newRank, first.inFeatures]))
            tensors.append((names.b, b, [first.outFeatures, newRank]))
        }
        let config = combinedConfig(inputs.map(\.adapter.config.json), rank: newRank, targets: targetModules(inputs))
        return AdapterOutput(config: config, tensors: tensors, rank: newRank)
    }

    /// git's three-way merge of an adapter on ΔW: result = ours + theirs − base, exactly, as concatenated factors.
    /// A module only one side changed (factors and scaling equal to the base's on the other side) is taken from that
    /// side; every module gets the same rank (zero-padded), r = lora_alpha = the largest such rank.
    public static func threeWay(base: AdapterFolder?, ours: AdapterFolder, theirs: AdapterFolder) throws -> AdapterOutput {
        var all = [ours, theirs]
        if let base { all.append(base) }
        var plans: [(name: String, terms: [(AdapterFolder, LoRAAdapter.Module, Double)])] = []
        for name in moduleNames(all) {
            func find(_ f: AdapterFolder?) -> (AdapterFolder, LoRAAdapter.Module)? {
                guard let f, let m = f.adapter.modules.first(where: { $0.name == name }) else { return nil }
                return (f, m)
            }
            let o = find(ours), t = find(theirs), b = find(base)
            let oursSame = try same(o, b), theirsSame = try same(t, b)
            var terms: [(AdapterFolder, LoRAAdapter.Module, Double)] = []
            if oursSame { if let t { terms.append((t.0, t.1, 1)) } }
            else if theirsSame { if let o { terms.append((o.0, o.1, 1)) } }
            else {
                if let o { terms.append((o.0, o.1, 1)) }
                if let t { terms.append((t.0, t.1, 1)) }
                if let b { terms.append((b.0, b.1, -1)) }
            }
            if !terms.isEmpty { plans.append((name, terms)) }
        }
        let rank = plans.map { $0.terms.reduce(0) { $0 + $1.1.rank } }.max() ?? 1
        var tensors: [(String, [Float], [Int])] = []
        for plan in plans {
            let m = plan.terms[0].1
            for (f, other, _) in plan.terms where other.inFeatures != m.inFeatures || other.outFeatures != m.outFeatures {
                throw TesseraError(.shapeMismatch, "\(f.name): module '\(plan.name)' maps \(other.inFeatures) → \(other.outFeatures) features, the other version \(m.inFeatures) → \(m.outFeatures)",
                                   hint: "the two branches adapt different models: resolve by hand")
            }
            var rng = SplitMix64(seed: 0)
            let (a, b) = try combineModule(plan.terms, combination: .cat, rank: rank, options: AdapterCombinationOptions(combination: .cat), rng: &rng)
            let names = factorNames(m)
            tensors.append((names.a, a, [rank, m.inFeatures]))
            tensors.append((names.b, b, [m.outFeatures, rank]))
        }
        let configs = [ours.adapter.config.json, theirs.adapter.config.json]
        return AdapterOutput(config: combinedConfig(configs, rank: rank, targets: targetModules(all)), tensors: tensors, rank: rank)
    }

    /// Whether two versions of a module have the same ΔW by construction (same factor bytes, same scaling).
    static func same(_ x: (AdapterFolder, LoRAAdapter.Module)?, _ y: (AdapterFolder, LoRAAdapter.Module)?) throws -> Bool {
        guard let x, let y else { return x == nil && y == nil }
        guard x.1.scaling == y.1.scaling, x.1.rank == y.1.rank, x.1.inFeatures == y.1.inFeatures, x.1.outFeatures == y.1.outFeatures else { return false }
        return try x.0.tensors.rawTensor(x.1.aName).bytes == y.0.tensors.rawTensor(y.1.aName).bytes
            && x.0.tensors.rawTensor(x.1.bName).bytes == y.0.tensors.rawTensor(y.1.bName).bytes
    }

    /// PEFT's tensor names for a module's factors.
    static func factorNames(_ m: LoRAAdapter.Module) -> (a: String, b: String) {
        let prefix = LoRAAdapter.peftPrefix + m.name
        return m.isEmbedding ? (prefix + ".lora_embedding_A", prefix + ".lora_embedding_B") : (prefix + ".lora_A.weight", prefix + ".lora_B.weight")
    }

    /// Every adapted module of the inputs, in order of first appearance.
    static func moduleNames(_ inputs: [AdapterFolder]) -> [String] {
        var seen = Set<String>(), out: [String] = []
        for i in inputs { for m in i.adapter.modules where seen.insert(m.name).inserted { out.append(m.name) } }
        return out
    }

    /// target_modules of the result: the union of lists (sorted, as PEFT's set), or the regexes joined as `(a)|(b)`.
    static func targetModules(_ inputs: [AdapterFolder]) -> JSONValue {
        let values = inputs.compactMap { $0.adapter.config.json["target_modules"] }
        if values.allSatisfy({ $0.arrayValue != nil }) {
            let names = Set(values.flatMap { $0.arrayValue ?? [] }.compactMap(\.stringValue))
            return .array(names.sorted().map { .string($0) })
        }
        let patterns = values.compactMap(\.stringValue)
        var seen = Set<String>()
        return .string(patterns.filter { seen.insert($0).inserted }.map { "(\($0))" }.joined(separator: "|"))
    }

    /// The first config with r = lora_alpha = `rank`, the targets given, and the keys that would rescale it cleared.
    static func combinedConfig(_ configs: [JSONValue], rank: Int, targets: JSONValue) -> JSONValue {
        var pairs = configs[0].objectValue ?? []
        func set(_ key: String, _ value: JSONValue) {
            if let k = pairs.firstIndex(where: { $0.0 == key }) { pairs[k].1 = value } else { pairs.append((key, value)) }
        }
        set("r", .int(rank))
        set("lora_alpha", .int(rank))
        set("target_modules", targets)
        set("alpha_pattern", .object([]))
        set("rank_pattern", .object([]))
        set("use_rslora", .bool(false))
        return .object(pairs)
    }

    /// One module's new factors, A [rank, d_in] and B [d_out, rank] (zero-padded to `rank` where the combination
    /// gives fewer components). `terms` are the adapters having the module with their weights.
    static func combineModule(_ terms: [(AdapterFolder, LoRAAdapter.Module, Double)], combination: AdapterCombination, rank: Int,
                              options: AdapterCombinationOptions, rng: inout SplitMix64) throws -> (a: [Float], b: [Float]) {
        let m0 = terms[0].1
        let dIn = m0.inFeatures, dOut = m0.outFeatures
        let (aCount, o1) = rank.multipliedReportingOverflow(by: dIn), (bCount, o2) = rank.multipliedReportingOverflow(by: dOut)
        let (dwCount, o3) = dOut.multipliedReportingOverflow(by: dIn)
        guard !o1, !o2, !o3, dwCount <= 1 << 31 else {
            throw TesseraError(.shapeMismatch, "module '\(m0.name)': rank \(rank) factors of \(dOut) × \(dIn) are too large", hint: "check the adapters' shapes")
        }
        var outA = [Float](repeating: 0, count: aCount), outB = [Float](repeating: 0, count: bCount)
        if combination == .cat {
            var col = 0
            for (f, m, w) in terms {
                let (a, b) = try f.factors(m)
                guard col + m.rank <= rank else {
                    throw TesseraError(.shapeMismatch, "\(f.name): module '\(m.name)' has rank \(m.rank), more than its config allows",
                                       hint: "the adapter_config.json does not describe these weights")
                }
                let fw = Float(w), fs = Float(m.scaling)
                for r in 0..<m.rank { for j in 0..<dIn { outA[(col + r) * dIn + j] = a[r * dIn + j] * fw * fs } }
                for o in 0..<dOut { for r in 0..<m.rank { outB[o * rank + col + r] = b[o * m.rank + r] } }
                col += m.rank
            }
            return (outA, outB)
        }
        if combination.isFactorWise {
            var aList: [[Float]] = [], bList: [[Float]] = [], wA: [Float] = [], wB: [Float] = []
            for (f, m, w) in terms {
                guard m.rank == rank else {
                    throw TesseraError(.shapeMismatch, "\(f.name): module '\(m.name)' has rank \(m.rank), not \(rank): \(combination.rawValue) combines factors of equal rank only",
                                       hint: "use --combination cat or svd")
                }
                let (a, b) = try f.factors(m)
                let ws = w * m.scaling
                let root = abs(ws).squareRoot()
                aList.append(a); bList.append(b)
                wA.append(Float(ws >= 0 ? root : -root)); wB.append(Float(root))
            }
            outA = try elementwise(aList, weights: wA, combination: combination, options: options, rng: &rng)
            outB = try elementwise(bList, weights: wB, combination: combination, options: options, rng: &rng)
            return (outA, outB)
        }
        if combination == .svd {
            // Σ wᵢ·ΔWᵢ is the product of the concatenated factors: its SVD comes from two thin SVDs of the factors,
            // O((d_out + d_in)·k²) instead of a dense SVD (which on an exactly low-rank ΔW also grinds through
            // denormal singular values).
            var rng2 = rng
            let (ca, cb) = try combineModule(terms, combination: .cat, rank: terms.reduce(0) { $0 + $1.1.rank },
                                             options: AdapterCombinationOptions(combination: .cat), rng: &rng2)
            let k = terms.reduce(0) { $0 + $1.1.rank }
            let f = try factoredSVD(a: ca, b: cb, rank: k, inFeatures: dIn, outFeatures: dOut, keep: rank)
            for r in 0..<f.rank { for j in 0..<dIn { outA[r * dIn + j] = f.a[r * dIn + j] } }
            for o in 0..<dOut { for r in 0..<f.rank { outB[o * rank + r] = f.b[o * f.rank + r] } }
            return (outA, outB)
        }
        // On ΔW (B·A layout, [d_out, d_in]; the elementwise steps do not depend on the layout).
        var deltas: [[Float]] = []
        for (f, m, _) in terms {
            let (a, b) = try f.factors(m)
            var d = LoRACombination.matmul(b, a, m: dOut, k: m.rank, n: dIn)
            let s = Float(m.scaling)
            for k in d.indices { d[k] *= s }
            deltas.append(d)
        }
        let weights = terms.map { Float($0.2) }
        let combined: [Float]
        switch combination {
        case .svd: combined = try elementwise(deltas, weights: weights, combination: .linear, options: options, rng: &rng)
        case .tiesSVD: combined = try elementwise(deltas, weights: weights, combination: .ties, options: options, rng: &rng)
        case .dareLinearSVD: combined = try elementwise(deltas, weights: weights, combination: .dareLinear, options: options, rng: &rng)
        case .dareTiesSVD: combined = try elementwise(deltas, weights: weights, combination: .dareTies, options: options, rng: &rng)
        case .magnitudePruneSVD: combined = try elementwise(deltas, weights: weights, combination: .magnitudePrune, options: options, rng: &rng)
        default: throw TesseraError(.invalidParameter, "unknown combination \(combination.rawValue)", hint: "see tessera merge --help")
        }
        let k = min(rank, dOut, dIn)
        let f = try LoRACombination.factorize(combined, outFeatures: dOut, inFeatures: dIn, rank: k)
        for r in 0..<k { for j in 0..<dIn { outA[r * dIn + j] = f.a[r * dIn + j] } }
        for o in 0..<dOut { for r in 0..<k { outB[o * rank + r] = f.b[o * k + r] } }
        return (outA, outB)
    }

    /// The best rank-`keep` factors of B·A (B [m, k], A [k, n]) without forming it: B = U_b·S_b·V_bᵀ (thin), then
    /// C = S_b·V_bᵀ·A = U_c·S_c·V_cᵀ (thin), so B·A = (U_b·U_c)·S_c·V_cᵀ is the SVD of B·A. Returns at most
    /// min(keep, m, n, k) components: A' = V_cᵀ[:r], B' = (U_b·U_c)[:, :r]·S_c[:r].
    static func factoredSVD(a: [Float], b: [Float], rank k: Int, inFeatures n: Int, outFeatures m: Int, keep: Int) throws -> LoRACombination.Factors {
        func thinSVD(_ x: [Float], _ rows: Int, _ cols: Int) throws -> (u: [Float], s: [Float], vt: [Float], k: Int) {
            guard let r = Linalg.svd(x, m: rows, n: cols) else {
                throw TesseraError(.invalidParameter, "the SVD of the combined ΔW did not converge", hint: "check the adapters for NaN or infinite values")
            }
            return (r.u, r.s, r.vt, min(rows, cols))
        }
        guard m > 0, n > 0, k > 0 else { return LoRACombination.Factors(a: [], b: [], rank: 0, inFeatures: n, outFeatures: m) }
        let sb = try thinSVD(b, m, k)                                                    // U_b [m, kb], V_bᵀ [kb, k]
        var svt = sb.vt
        for i in 0..<sb.k { for j in 0..<k { svt[i * k + j] *= sb.s[i] } }
        let c = LoRACombination.matmul(svt, a, m: sb.k, k: k, n: n)                      // C [kb, n]
        let sc = try thinSVD(c, sb.k, n)                                                 // U_c [kb, kc], V_cᵀ [kc, n]
        let u = LoRACombination.matmul(sb.u, sc.u, m: m, k: sb.k, n: sc.k)               // [m, kc]
        let r = min(keep, sc.k)
        var outA = [Float](repeating: 0, count: r * n), outB = [Float](repeating: 0, count: m * r)
        for i in 0..<r { for j in 0..<n { outA[i * n + j] = sc.vt[i * n + j] } }
        for o in 0..<m { for i in 0..<r { outB[o * r + i] = u[o * sc.k + i] * sc.s[i] } }
        return LoRACombination.Factors(a: outA, b: outB, rank: r, inFeatures: n, outFeatures: m)
    }

    /// PEFT's merge_utils on equally shaped tensors: task_arithmetic (`linear`), `ties`, `dare_linear`, `dare_ties`,
    /// `magnitude_prune`. Sign election is on the pruned, unweighted tensors; the disjoint mean divides by the count
    /// of agreeing entries (at least 1).
    static func elementwise(_ xs: [[Float]], weights: [Float], combination: AdapterCombination, options: AdapterCombinationOptions,
                            rng: inout SplitMix64) throws -> [Float] {
        let n = xs[0].count
        var pruned = xs
        let density = options.density ?? 1
        switch combination {
        case .ties, .magnitudePrune:
            if density < 1 {
                let k = Int(density * Double(n))
                for i in pruned.indices {
                    if k <= 0 { pruned[i] = [Float](repeating: 0, count: n); continue }
                    pruned[i].withUnsafeMutableBufferPointer { MagnitudeSelect.keepTopK($0, k: k) }
                }
            }
        case .dareLinear, .dareTies:
            if density < 1 {
                for i in pruned.indices {
                    for j in 0..<n { pruned[i][j] = rng.nextUnit() < density ? pruned[i][j] / Float(density) : 0 }
                }
            }
        default: break
        }
        var out = [Float](repeating: 0, count: n)
        if combination == .ties || combination == .dareTies {
            for j in 0..<n {
                var magnitude: Float = 0
                for x in pruned { magnitude += options.majoritySignByFrequency ? sign(x[j]) : x[j] }
                let majority: Float = magnitude >= 0 ? 1 : -1
                var sum: Float = 0, count: Float = 0
                for (x, w) in zip(pruned, weights) where sign(x[j]) == majority {
                    sum += x[j] * w
                    count += 1
                }
                out[j] = sum / max(count, 1)
            }
            return out
        }
        for (x, w) in zip(pruned, weights) { for j in 0..<n { out[j] += x[j] * w } }
        return out
    }

    static func sign(_ x: Float) -> Float { x > 0 ? 1 : (x < 0 ? -1 : 0) }

    /// ‖B·A‖_F = √trace((BᵀB)(AAᵀ)), A [r, d_in], B [d_out, r], accumulated in double.
    public static func productNorm(a: [Float], b: [Float], rank r: Int, inFeatures: Int, outFeatures: Int) -> Double {
        guard r > 0, a.count == r * inFeatures, b.count == outFeatures * r else { return 0 }
        var aat = [Double](repeating: 0, count: r * r), btb = [Double](repeating: 0, count: r * r)
        for i in 0..<r {
            for j in i..<r {
                var s = 0.0
                for k in 0..<inFeatures { s += Double(a[i * inFeatures + k]) * Double(a[j * inFeatures + k]) }
                aat[i * r + j] = s; aat[j * r + i] = s
                var t = 0.0
                for o in 0..<outFeatures { t += Double(b[o * r + i]) * Double(b[o * r + j]) }
                btb[i * r + j] = t; btb[j * r + i] = t
            }
        }
        var trace = 0.0
        for i in 0..<r { for j in 0..<r { trace += btb[i * r + j] * aat[j * r + i] } }
        return max(trace, 0).squareRoot()
    }

    /// JSON indented by two spaces (adapter_config.json as PEFT writes it, readable in a text diff).
    public static func pretty(_ v: JSONValue, indent: String = "") -> String {
        let inner = indent + "  "
        switch v {
        case let .array(items) where !items.isEmpty:
            return "[\n" + items.map { inner + pretty($0, indent: inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case let .object(pairs) where !pairs.isEmpty:
            return "{\n" + pairs.map { k, x in
                var key = ""
                JSONValue.writeString(k, to: &key)
                return inner + key + ": " + pretty(x, indent: inner)
            }.joined(separator: ",\n") + "\n" + indent + "}"
        default:
            return v.serialized()
        }
    }
}

/// A small seeded generator for DARE's masks (reproducible from `seed`).
public struct SplitMix64: Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }
}
