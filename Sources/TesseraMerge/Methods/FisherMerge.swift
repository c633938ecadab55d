import TesseraCore
import TesseraIO

/// `fisher`: Fisher-weighted averaging (Matena & Raffel 2022) with diagonal Fishers F_j, one per model:
///
///     θ = Σ_j c_j F̃_j θ_j / Σ_j c_j F̃_j          elementwise, in float64
///     F̃_j = max(F_j, epsilon) for the target model j = 0 only (favor_target: true, default), or for every model
///     c_j = weight_j / ‖F_j‖₂ over ALL of model j's Fisher tensors (normalize: true, default), else weight_j
///
/// as in the authors' code (`fisher_floor` 1e-6, `favor_target_model`, `normalize_fishers`). Fishers must be
/// non-negative and not NaN; each model's Fisher source is given per model (config: `parameters: {fisher: PATH}`).
public struct FisherMerge: MergeMethod {
    public static let name = "fisher"
    public static let summary = "Fisher-weighted average with diagonal Fishers (Matena & Raffel)"
    public static let baseUse = BaseUse.ignored
    public static let needsFisher = true
    public static let globalParameters: [ParameterDefinition] = [
        .bool("normalize", true, aliases: ["normalize_fishers"], help: "divide each model's weight by its Fisher's L2 norm"),
        .number("epsilon", 1e-6, aliases: ["fisher_floor"], help: "floor applied to the Fisher (of the target model only, with favor_target)"),
        .bool("favor_target", true, aliases: ["favor_target_model"], help: "floor only the first (target) model's Fisher"),
    ]
    public static let modelParameters: [ParameterDefinition] = [
        .number("weight", 1, aliases: ["coefficient"], help: "the model's merging coefficient"),
    ]

    /// ‖F_j‖₂ over all tensors, gathered by `prepare` when normalising.
    public var fisherNorms: [Double]?

    public init() {}

    public mutating func prepare(_ context: MergePreparation) throws {
        guard let first = context.tensorNames.first else { return }
        let probe = try context.loadInput(first)
        guard try probe.parameters.bool("normalize") else { return }
        var sums = [Double](repeating: 0, count: probe.models.count)
        for name in context.tensorNames {
            let input = try context.loadInput(name)
            let fishers = try Self.checkedFishers(input)
            for (j, f) in fishers.enumerated() { for v in f { sums[j] += Double(v) * Double(v) } }
        }
        fisherNorms = sums.map { $0.squareRoot() }
        if let j = fisherNorms!.firstIndex(of: 0) {
            throw TesseraError(.invalidParameter, "fisher: the Fisher of model \(j) is zero everywhere, so it cannot be normalised",
                               hint: "check the Fisher file, or set normalize: false")
        }
    }

    /// The L2 norm of all of a Fisher source's tensors (the `normalize_fishers` divisor).
    public static func l2Norm(of source: TensorSource) throws -> Double {
        var s = 0.0
        for name in source.tensorNames {
            for v in try source.floats(name) { s += Double(v) * Double(v) }
        }
        return s.squareRoot()
    }

    static func checkedFishers(_ input: TensorMergeInput) throws -> [[Float]] {
        guard let fishers = input.fishers, fishers.count == input.models.count else {
            throw TesseraError(.usage, "fisher: every model needs a Fisher (tensor '\(input.name)')",
                               hint: "give each model a Fisher source, in a config as parameters: {fisher: PATH}")
        }
        for (j, f) in fishers.enumerated() {
            guard f.count == input.models[j].count else {
                throw TesseraError(.shapeMismatch, "fisher: the Fisher of model \(j) for tensor '\(input.name)' has \(f.count) values, the model has \(input.models[j].count)")
            }
            if let k = f.firstIndex(where: { !($0 >= 0) }) {
                throw TesseraError(.invalidParameter, "fisher: the Fisher of model \(j) for tensor '\(input.name)' has \(f[k]) at index \(k)",
                                   hint: "a diagonal Fisher is non-negative; recompute it")
            }
        }
        return fishers
    }

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let fishers = try Self.checkedFishers(input)
        let m = input.models.count
        guard m > 0 else { throw TesseraError(.usage, "fisher: no models (tensor '\(input.name)')", hint: "list models") }
        let p = input.parameters
        let floor = try p.double("epsilon")
        let favorTarget = try p.bool("favor_target")
        var c = try input.modelParameters.map { try $0.double("weight") }
        if try p.bool("normalize") {
            guard let norms = fisherNorms, norms.count == m else {
                throw TesseraError(.usage, "fisher: normalize needs the Fisher norms of the whole model (tensor '\(input.name)')",
                                   hint: "run it through the merge driver, which calls prepare(), or set fisherNorms")
            }
            for j in 0..<m { c[j] /= norms[j] }
        }
        let n = input.models[0].count
        var out = [Float](repeating: 0, count: n)
        for k in 0..<n {
            var num = 0.0, den = 0.0
            for j in 0..<m {
                var d = Double(fishers[j][k])
                if !favorTarget || j == 0 { d = max(d, floor) }
                num += c[j] * d * Double(input.models[j][k])
                den += c[j] * d
            }
            out[k] = Float(num / den)
        }
        return out
    }
}
