import TesseraCore
import TesseraIO
import TesseraMath

/// `ties` (Yadav et al. 2023): trim each task vector to its largest-magnitude entries, elect a sign per entry, and
/// average the entries that agree with it. Three published variants differ; `ties_variant` picks one:
///
/// - `mergekit` (default, what mergekit YAML configs mean): per tensor, keep exactly k = max(1, ⌊density·n⌋) entries
///   of each τ_i (ties at the threshold resolved as torch's argsort resolves them, `TorchSort`); multiply by the
///   weights BEFORE the vote;
///   elected sign = sign of Σ_i w_i τ_i with an exact zero electing +1; divide by the sum of the agreeing weights
///   (normalize: true, default); θ = θ_base + λ·mixed.
/// - `peft` (PEFT's `ties`): per tensor, keep k = ⌊density·n⌋ entries (k = 0 keeps none); vote on the UNWEIGHTED
///   trimmed vectors (consensus sum = PEFT "total", count = "frequency"); Σ agreeing w_i τ_i divided by the COUNT of
///   agreeing models; θ = θ_base + λ·mixed.
/// - `paper` (the authors' code): trim over the WHOLE model, keeping |τ| ≥ the (n − ⌊density·n⌋)-th smallest
///   magnitude of all of a model's parameters (so ⌊density·n⌋ + 1 entries, plus every tie); weights are not used;
///   elected sign = sign of Σ_i τ_i, an exact zero taking the sign of the model-wide sum of elected signs (and if that
///   is zero too, the negative entries are selected); mean of the selected non-zero entries; θ = θ_base + λ·mean.
///   It needs a pass over the whole model first (`prepare`), three reads of every input.
public struct TiesMerge: MergeMethod {
    public enum Variant: String, Sendable, CaseIterable { case mergekit, peft, paper }

    public static let name = "ties"
    public static let summary = "trim, elect sign, disjoint merge (ties_variant: mergekit | peft | paper)"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        CommonParameters.normalize(true), CommonParameters.lambda, CommonParameters.rescale(false), CommonParameters.consensus,
        CommonParameters.int8Mask,
        .string("ties_variant", "mergekit", help: "mergekit (default), peft or paper"),
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight, CommonParameters.density]

    /// The paper variant's model-wide state: per listed model, the magnitude key threshold (keep key ≥ threshold),
    /// and the sign that breaks zero elections.
    var paperThresholds: [UInt32]?
    var paperGlobalSign: Float = 0

    public init() {}

    static func variant(_ p: MergeParameters) throws -> Variant {
        let s = p.has("ties_variant") ? try p.string("ties_variant") : "mergekit"
        guard let v = Variant(rawValue: s) else {
            throw TesseraError(.invalidParameter, "ties: unknown ties_variant '\(s)'", hint: "use mergekit, peft or paper")
        }
        return v
    }

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        switch try Self.variant(input.parameters) {
        case .mergekit:
            let c = try TaskArithmeticKernel.consensus(input.parameters, method: Self.name)
            return try TaskArithmeticKernel.merge(&input, method: Self.name, sparsification: .magnitude, consensus: c)
        case .peft:
            return try mergePEFT(&input)
        case .paper:
            return try mergePaper(&input)
        }
    }

    // MARK: PEFT

    func mergePEFT(_ input: inout TensorMergeInput) throws -> [Float] {
        var base = try input.requireBase(Self.name)
        input.base = nil
        let n = base.count
        let consensus = try TaskArithmeticKernel.consensus(input.parameters, method: Self.name)
        let lambda = Float(try input.parameters.double("lambda"))
        var trimmed: [[Float]] = []
        var weights: [Float] = []
        for i in input.nonBaseIndices {
            var d = input.models[i]
            input.models[i] = []
            let mp = input.modelParameters[i]
            weights.append(Float(try mp.double("weight")))
            let density = try TaskArithmeticKernel.density(mp, model: i, tensor: input.name, method: Self.name)
            d.withUnsafeMutableBufferPointer { dp in
                base.withUnsafeBufferPointer { bp in Parallel.forChunks(n) { _, r in for j in r { dp[j] -= bp[j] } } }
            }
            if density < 1 {
                let k = Int(density * Double(n))
                if k == 0 {
                    d = [Float](repeating: 0, count: n)
                } else {
                    d.withUnsafeMutableBufferPointer { MagnitudeSelect.keepTopK($0, k: k) }
                }
            }
            trimmed.append(d)
        }
        let m = trimmed.count
        if m == 0 { return base }
        let bySum = consensus == .sum
        let w = UnsafeMutablePointer<Float>.allocate(capacity: m)
        defer { w.deallocate() }
        for i in 0..<m { w[i] = weights[i] }
        withBufferPointers(&trimmed) { t in
            base.withUnsafeMutableBufferPointer { out in
                Parallel.forChunks(n) { _, r in
                    for j in r {
                        var s: Float = 0
                        for i in 0..<m { let v = t[i][j]; s += bySum ? v : (v > 0 ? 1 : (v < 0 ? -1 : 0)) }
                        var mixed: Float = 0
                        var count: Float = 0
                        for i in 0..<m {
                            let v = t[i][j]
                            let agrees = s >= 0 ? v > 0 : v < 0
                            mixed += agrees ? v * w[i] : 0
                            count += agrees ? 1 : 0
                        }
                        out[j] += lambda * (mixed / max(count, 1))
                    }
                }
            }
        }
        return base
    }

    // MARK: paper

    public mutating func prepare(_ context: MergePreparation) throws {
        guard let first = context.tensorNames.first else { return }
        let probe = try context.loadInput(first)
        guard try Self.variant(probe.parameters) == .paper else { return }
        let modelCount = probe.models.count
        var densities: [Double] = []
        for i in 0..<modelCount {
            densities.append(try TaskArithmeticKernel.density(probe.modelParameters[i], model: i, tensor: first, method: Self.name))
        }
        // Pass 1 and 2: a radix select over every parameter of each model's task vector.
        let hiBins = 1 << 15, loBins = 1 << 16
        var hist1 = [[Int]](repeating: [Int](repeating: 0, count: hiBins), count: modelCount)
        var total = 0
        for name in context.tensorNames {
            let input = try context.loadInput(name)
            guard let base = input.base else { throw TesseraError(.usage, "ties: needs a base model", hint: "set base_model") }
            total += base.count
            for i in 0..<modelCount where !input.isBaseModel[i] {
                let m = input.models[i]
                for j in 0..<base.count { hist1[i][Int(MagnitudeSelect.key(m[j] - base[j]) >> 16)] += 1 }
            }
        }
        // Rank (ascending, 0-based) of the threshold: the (n − ⌊K·n⌋)-th smallest, i.e. rank n − ⌊K·n⌋ − 1.
        var ranks = [Int](repeating: 0, count: modelCount)
        var buckets = [Int](repeating: 0, count: modelCount)
        var belowBucket = [Int](repeating: 0, count: modelCount)
        var keepAll = [Bool](repeating: false, count: modelCount)
        for i in 0..<modelCount {
            let kept = Int(densities[i] * Double(total))
            if kept >= total { keepAll[i] = true; continue }
            ranks[i] = total - kept - 1
            var below = 0, b = 0
            while b < hiBins { if below + hist1[i][b] > ranks[i] { break }; below += hist1[i][b]; b += 1 }
            buckets[i] = b
            belowBucket[i] = below
        }
        var hist2 = [[Int]](repeating: [Int](repeating: 0, count: loBins), count: modelCount)
        for name in context.tensorNames {
            let input = try context.loadInput(name)
            let base = input.base!
            for i in 0..<modelCount where !input.isBaseModel[i] && !keepAll[i] {
                let m = input.models[i]
                let hi = UInt32(buckets[i]) << 16
                for j in 0..<base.count {
                    let k = MagnitudeSelect.key(m[j] - base[j])
                    if k & 0xFFFF_0000 == hi { hist2[i][Int(k & 0xFFFF)] += 1 }
                }
            }
        }
        var thresholds = [UInt32](repeating: 0, count: modelCount)
        for i in 0..<modelCount where !keepAll[i] {
            var below = belowBucket[i], b = 0
            while b < loBins { if below + hist2[i][b] > ranks[i] { break }; below += hist2[i][b]; b += 1 }
            thresholds[i] = (UInt32(buckets[i]) << 16) | UInt32(b)
        }
        paperThresholds = thresholds
        // Pass 3: the model-wide sum of elected signs, which breaks exact-zero elections.
        paperGlobalSign = 0
        var signSum = 0
        for name in context.tensorNames {
            let input = try context.loadInput(name)
            let base = input.base!
            for j in 0..<base.count {
                var s: Float = 0
                for i in 0..<modelCount where !input.isBaseModel[i] {
                    let t = input.models[i][j] - base[j]
                    if MagnitudeSelect.key(t) >= thresholds[i] { s += t }
                }
                signSum += s > 0 ? 1 : (s < 0 ? -1 : 0)
            }
        }
        paperGlobalSign = signSum > 0 ? 1 : (signSum < 0 ? -1 : 0)
    }

    func mergePaper(_ input: inout TensorMergeInput) throws -> [Float] {
        guard let thresholds = paperThresholds else {
            throw TesseraError(.usage, "ties: the paper variant needs a pass over the whole model first (tensor '\(input.name)')",
                               hint: "run it through the merge driver, which calls prepare()")
        }
        var base = try input.requireBase(Self.name)
        input.base = nil
        let lambda = Float(try input.parameters.double("lambda"))
        let idx = input.nonBaseIndices
        for j in 0..<base.count {
            var s: Float = 0
            for i in idx {
                let t = input.models[i][j] - base[j]
                if MagnitudeSelect.key(t) >= thresholds[i] { s += t }
            }
            let sign: Float = s > 0 ? 1 : (s < 0 ? -1 : paperGlobalSign)
            var sum: Float = 0
            var count: Float = 0
            for i in idx {
                let t = input.models[i][j] - base[j]
                guard MagnitudeSelect.key(t) >= thresholds[i] else { continue }
                if sign > 0 ? t > 0 : t < 0 { sum += t; count += 1 }
            }
            base[j] += lambda * sum / max(count, 1)
        }
        return base
    }
}
