import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// mergekit's "generalized task arithmetic", the kernel under task_arithmetic, ties, dare_linear, dare_ties,
/// breadcrumbs, breadcrumbs_ties, della and della_linear (mergekit 0.1.5 semantics, as restated in the reference spec `mk_gta`):
///
///     δ_i  = sparsify(θ_i − θ_base)                   per model, with its own density
///     wδ_i = w_i · δ_i                                 weights BEFORE the sign election
///     consensus sum:   s = Σ_i wδ_i,   count: s = Σ_i sign(wδ_i);   elected sign = s ≥ 0 ? +1 : −1
///                      (an exact zero vote elects +1; zero entries never agree)
///     mixed = Σ_{i agreeing} wδ_i,     divisor = Σ_{i agreeing} w_i  (0 → 1)
///     no consensus:    mixed = Σ_i wδ_i, divisor = Σ_i w_i
///     normalize:       mixed /= divisor     (signed divisor: a lone weight −1 cancels itself; negate with λ = −1)
///     θ = θ_base + λ · mixed
///
/// In a float16 or bfloat16 merge dtype every step above is a torch op whose result mergekit rounds to that dtype
/// (weights included: mergekit makes them a tensor of the merge dtype); `computeDType` selects that path
/// (`halfKernel`), which rounds where torch does. The magnitude trims keep the entries torch's sort keeps
/// (`TorchSort`), ties included.
enum TaskArithmeticKernel {
    /// The most memory the models' trims of one tensor may take side by side (their tie-replay pairs).
    static let sideBySideTrimBytes = 256 << 20

    enum Sparsification { case none, magnitude, magnitudeOutliers, random, dellaMagprune }
    enum Consensus: String { case none, sum, count }

    static func consensus(_ p: MergeParameters, method: String) throws -> Consensus {
        let s = p.has("consensus") ? try p.string("consensus") : "sum"
        guard let c = Consensus(rawValue: s), c != .none else {
            throw TesseraError(.invalidParameter, "\(method): consensus must be 'sum' or 'count', not '\(s)'", hint: "use consensus: sum (TIES) or count")
        }
        return c
    }

    static func density(_ p: MergeParameters, model: Int, tensor: String, method: String) throws -> Double {
        let d = p.has("density") ? try p.double("density") : 1
        guard d > 0, d <= 1, !d.isNaN else {
            throw TesseraError(.invalidParameter, "\(method): density \(d) of model \(model) for tensor '\(tensor)' is outside (0, 1]",
                               hint: "density is the fraction of each task vector kept: use a value in (0, 1]")
        }
        return d
    }

    static func merge(_ input: inout TensorMergeInput, method: String, sparsification: Sparsification, consensus: Consensus) throws -> [Float] {
        var base = try input.requireBase(method)
        input.base = nil
        for i in input.models.indices where input.isBaseModel[i] { input.models[i] = [] } // keep `base` uniquely owned
        let n = base.count
        let indices = input.nonBaseIndices
        if indices.isEmpty { return base }
        let p = input.parameters
        let normalize = try p.bool("normalize")
        let rescale = p.has("rescale") ? try p.bool("rescale") : false
        let lambda = Float(p.has("lambda") ? try p.double("lambda") : 1)
        let seed = p.has("seed") ? try DareSeed.value(p, method: method) : 0
        let rescaleMode = p.has("rescale_mode") ? try p.string("rescale_mode") : "l1"
        guard rescaleMode == "l1" || rescaleMode == "density" else {
            throw TesseraError(.invalidParameter, "\(method): rescale_mode must be 'l1' or 'density', not '\(rescaleMode)'",
                               hint: "l1 restores each task vector's L1 norm (mergekit); density divides by the keep probability (DARE paper)")
        }

        let r = TorchRounding(input.computeDType)
        var weights: [Float] = []
        var deltas: [[Float]] = []
        // The magnitude trims (a radix select, and torch's tie order replayed on one core where a tie straddles a
        // cut, as it often does in a large float32 tensor) run after this loop, the models' trims side by side.
        var trims: [MagnitudeTrim] = []
        for i in indices {
            var d = try input.takeTaskVector(i, base: base, method: method)
            let mp = input.modelParameters[i]
            weights.append(r(Float(try mp.double("weight"))))
            let density = try density(mp, model: i, tensor: input.name, method: method)
            r.round(&d)
            if density < 1, n > 0 {
                switch sparsification {
                case .none:
                    break
                case .magnitude:
                    trims.append(MagnitudeTrim(model: deltas.count, topK: max(1, Int(density * Double(n))), lower: 0, upper: 0))
                case .magnitudeOutliers:
                    let gamma = mp.has("gamma") ? try mp.double("gamma") : 0.01
                    guard gamma >= 0, gamma < 1 else {
                        throw TesseraError(.invalidParameter, "\(method): gamma \(gamma) of model \(i) for tensor '\(input.name)' is outside [0, 1)",
                                           hint: "gamma is the fraction of largest-magnitude outliers dropped")
                    }
                    let target = Int(density * Double(n))
                    // n_bot = n − target − n_top; when negative mergekit shrinks n_top instead, so n_bot = 0.
                    let bottom = max(0, n - target - Int(gamma * Double(n)))
                    trims.append(MagnitudeTrim(model: deltas.count, topK: nil, lower: bottom, upper: bottom + target))
                case .dellaMagprune:
                    // DELLA's MAGPRUNE (Methods/DellaMerge.swift): keep probabilities by magnitude rank, seeded draws.
                    let epsilon = try DellaMagprune.epsilon(mp, density: density, model: i, tensor: input.name, method: method)
                    let key = DropRNG.streamKey(seed: seed, tensor: input.name, model: i)
                    let before = rescale ? l1(d, r) : 0
                    DellaMagprune.prune(&d, shape: input.shape, density: density, epsilon: epsilon, key: key)
                    if rescale { rescaleL1(&d, originalSum: before, r) }
                case .random:
                    let key = DropRNG.streamKey(seed: seed, tensor: input.name, model: i)
                    // mergekit's bernoulli path works in float32 for a float16 tensor (torch has no float16
                    // bernoulli on CPU) and rounds once at the end; bfloat16 stays bfloat16 throughout.
                    let work = r.half == .f16 ? TorchRounding(.f32) : r
                    let before = rescale ? l1(d, work) : 0
                    d.withUnsafeMutableBufferPointer { DropRNG.drop($0, density: density, key: key) }
                    if rescale {
                        if rescaleMode == "density" {
                            // The DARE paper's rescale: survivors divided by the keep probability.
                            let fd = Float(density)
                            d.withUnsafeMutableBufferPointer { MergeKernels.divide($0, by: fd) }
                        } else {
                            rescaleL1(&d, originalSum: before, work)
                        }
                        r.round(&d)
                    }
                }
            }
            deltas.append(d)
        }
        // A top-k trim without a rescale after it is applied in the float32 combination below (entries from a
        // magnitude key on, per model) rather than by a pass zeroing the rest of each delta.
        let masked = r.isIdentity && !rescale
        let keepFrom = UnsafeMutablePointer<UInt32>.allocate(capacity: max(deltas.count, 1))
        defer { keepFrom.deallocate() }
        keepFrom.initialize(repeating: 0, count: max(deltas.count, 1))
        if !trims.isEmpty {
            let jobs = trims
            deltas.withUnsafeMutableBufferPointer { db in
                let all = SharedMutablePointer(db.baseAddress!)
                let thresholds = SharedMutablePointer(keepFrom)
                let body = { (t: Int) in
                    thresholds[jobs[t].model] = jobs[t].apply(&all.base[jobs[t].model], rescale: rescale, r, masked: masked)
                }
                // One trim at a time when the tensor is small (its own loops stay serial there anyway), and when it
                // is large: a trim that replays torch's tie order holds 4 bytes per element of the whole tensor
                // (154 MB for GPT-2's embedding, 8 for breadcrumbs' two cuts), and two side by side would take peak
                // memory past 1 GB. libdispatch's threads wait without spinning for the longer trim (Parallel's
                // workers would spin).
                let pairBytes = jobs.reduce(0) { $0 + ($1.topK != nil ? TorchSort.topKReplayBytes(n) : n * MemoryLayout<TorchSort.Pair>.stride) }
                if n >= Parallel.minimumParallelCount && jobs.count > 1 && pairBytes <= Self.sideBySideTrimBytes {
                    let sendable = unsafeBitCast(body, to: (@Sendable (Int) -> Void).self)
                    DispatchQueue.concurrentPerform(iterations: jobs.count, execute: sendable)
                } else {
                    for t in jobs.indices { body(t) }
                }
            }
        }

        var scalarDivisor: Float = 1
        if consensus == .none {
            var sum: Float = 0
            for w in weights { sum += w }
            if normalize {
                guard abs(sum) >= 1e-8 else {
                    throw TesseraError(.invalidParameter, "\(method): the weights sum to \(sum) under normalize: true (tensor '\(input.name)')",
                                       hint: "use weights with a non-zero sum, or normalize: false (to negate a task vector use lambda: -1)")
                }
                scalarDivisor = sum
            }
        }
        let m = deltas.count
        let weightPointer = UnsafeMutablePointer<Float>.allocate(capacity: m)
        let deltaPointers = UnsafeMutablePointer<UnsafeMutablePointer<Float>>.allocate(capacity: m)
        defer { weightPointer.deallocate(); deltaPointers.deallocate() }
        for i in 0..<m { weightPointer[i] = weights[i] }
        let divisor = scalarDivisor
        withBufferPointers(&deltas) { dps in
            for i in 0..<m { deltaPointers[i] = dps[i] }
            base.withUnsafeMutableBufferPointer { bp in
                let out = bp.baseAddress ?? UnsafeMutablePointer<Float>(bitPattern: MemoryLayout<Float>.alignment)!
                let kernelConsensus: MergeKernels.Consensus = consensus == .none ? .none : (consensus == .sum ? .sum : .count)
                if r.isIdentity {
                    let trimmed = masked && !trims.isEmpty ? UnsafePointer(keepFrom) : nil
                    Parallel.forChunks(n) { _, range in
                        MergeKernels.taskArithmetic(range, out: out, deltas: deltaPointers, weights: weightPointer, models: m,
                                                    consensus: kernelConsensus, normalize: normalize, lambda: lambda, divisor: divisor,
                                                    keepFrom: trimmed)
                    }
                } else {
                    let shared = UncheckedSendable((out, deltaPointers, weightPointer))
                    Parallel.forChunks(n) { _, range in
                        let (o, ds, ws) = shared.value
                        halfKernel(range, out: o, deltas: ds, weights: ws, models: m, consensus: kernelConsensus,
                                   normalize: normalize, lambda: lambda, r)
                    }
                }
            }
        }
        return base
    }

    /// One model's magnitude trim: the top `topK` magnitudes (TIES, DARE's magnitude variants) or, without `topK`, the
    /// ascending ranks lower..<upper (breadcrumbs), with mergekit's optional L1 rescale.
    struct MagnitudeTrim: Sendable {
        var model: Int
        var topK: Int?
        var lower: Int
        var upper: Int

        /// Returns the magnitude key from which the combination is to count `d`'s entries: with `masked`, a top-k
        /// leaves the untied entries as they are and returns its threshold; otherwise `d` is trimmed here (0).
        func apply(_ d: inout [Float], rescale: Bool, _ r: TorchRounding, masked: Bool) -> UInt32 {
            if masked, let k = topK { return d.withUnsafeMutableBufferPointer { TorchSort.topKThreshold($0, k: k) } }
            let before = rescale ? l1(d, r) : 0
            if let k = topK {
                d.withUnsafeMutableBufferPointer { TorchSort.keepTopK($0, k: k) }
            } else {
                _ = d.withUnsafeMutableBufferPointer { TorchSort.keepAscendingRanks($0, lower: lower, upper: upper) }
            }
            if rescale { rescaleL1(&d, originalSum: before, r) }
            return 0
        }
    }

    /// ‖x‖₁ as mergekit's `tensor.abs().sum()` gives it: in float32 in torch's summation order, in a 16-bit dtype a
    /// double sum rounded once to it.
    static func l1(_ x: [Float], _ r: TorchRounding) -> Float {
        if r.isIdentity { return x.withUnsafeBufferPointer { TorchReductions.sumOfMagnitudes($0) } }
        return r.reduced(x.withUnsafeBufferPointer { MergeKernels.l1($0) })
    }

    /// mergekit's L1 rescale (`rescaled_masked_tensor` with norm l1): multiply the survivors by ‖τ‖₁ / ‖mask ⊙ τ‖₁,
    /// unless either norm is below 1e-7. As in torch, both norms are tensors of the compute dtype (rounded from the
    /// wider sum), their quotient is one too, and so is each product.
    static func rescaleL1(_ x: inout [Float], originalSum before: Float, _ r: TorchRounding) {
        let after = l1(x, r)
        guard before >= 1e-7, after >= 1e-7 else { return }
        let f = r(before / after)
        x.withUnsafeMutableBufferPointer { MergeKernels.scale($0, by: f) }
        r.round(&x)
    }

    /// The task-arithmetic combination in a 16-bit compute dtype, op by op as mergekit's torch code runs it:
    ///
    ///     wδ_i = r(δ_i · w_i)                          deltas.mul_(weights)
    ///     vote = r(Σ_i wδ_i)                           delta.sum(dim=0): float32 sum, rounded once
    ///     mixed = r(Σ_{i agreeing} wδ_i), divisor = r(Σ_{i agreeing} w_i)   (deltas * mask).sum(0), (weights * mask).sum(0)
    ///     mixed = r(mixed / divisor); mixed = r(mixed · λ); out = r(base + mixed)
    ///
    /// Sums over the models run in model order in float32, as torch's reduction over the stacked dimension does.
    static func halfKernel(_ range: Range<Int>, out: UnsafeMutablePointer<Float>, deltas d: UnsafePointer<UnsafeMutablePointer<Float>>,
                           weights w: UnsafePointer<Float>, models m: Int, consensus: MergeKernels.Consensus, normalize: Bool,
                           lambda: Float, _ r: TorchRounding) {
        var weightSum: Float = 0
        for i in 0..<m { weightSum += w[i] }
        var noConsensusDivisor = r(weightSum)
        if abs(noConsensusDivisor) < 1e-8 { noConsensusDivisor = 1 }
        let products = UnsafeMutablePointer<Float>.allocate(capacity: max(m, 1))
        defer { products.deallocate() }
        for j in range {
            var mixed: Float = 0, divisor: Float = 0
            if consensus == .none {
                for i in 0..<m { mixed += r(d[i][j] * w[i]) }
                mixed = r(mixed)
                divisor = noConsensusDivisor
            } else {
                var vote: Float = 0
                for i in 0..<m {
                    let v = r(d[i][j] * w[i])
                    products[i] = v
                    vote += consensus == .sum ? v : (v > 0 ? 1 : (v < 0 ? -1 : 0))
                }
                let positive = r(vote) >= 0
                for i in 0..<m {
                    let v = products[i]
                    let agrees = positive ? v > 0 : v < 0
                    mixed += agrees ? v : 0
                    divisor += agrees ? w[i] : 0
                }
                mixed = r(mixed)
                divisor = r(divisor)
                if divisor == 0 { divisor = 1 }
            }
            if normalize { mixed = r(mixed / divisor) }
            if lambda != 1 { mixed = r(mixed * lambda) }
            out[j] = r(out[j] + mixed)
        }
    }
}

/// Pointers to several arrays at once (nested `withUnsafeMutableBufferPointer`), for kernels that read N models per
/// element. The pointers are valid only inside `body`.
func withBufferPointers<R>(_ arrays: inout [[Float]], from k: Int = 0, _ acc: [UnsafeMutablePointer<Float>] = [],
                           _ body: ([UnsafeMutablePointer<Float>]) throws -> R) rethrows -> R {
    if k == arrays.count { return try body(acc) }
    var a = arrays[k]
    arrays[k] = []
    defer { arrays[k] = a }
    return try a.withUnsafeMutableBufferPointer { p in
        // An empty array has no storage; its pointer is never dereferenced (the loops run over zero elements).
        let ptr = p.baseAddress ?? UnsafeMutablePointer<Float>(bitPattern: MemoryLayout<Float>.alignment)!
        return try withBufferPointers(&arrays, from: k + 1, acc + [ptr], body)
    }
}

/// Read-only pointers to the storage of several arrays, for kernels that only read them (no copy-on-write check).
func withReadOnlyPointers<R>(_ arrays: [[Float]], from k: Int = 0, _ acc: [UnsafePointer<Float>] = [],
                             _ body: ([UnsafePointer<Float>]) throws -> R) rethrows -> R {
    if k == arrays.count { return try body(acc) }
    return try arrays[k].withUnsafeBufferPointer { p in
        // An empty array has no storage; its pointer is never dereferenced (the loops run over zero elements).
        let ptr = p.baseAddress ?? UnsafePointer<Float>(bitPattern: MemoryLayout<Float>.alignment)!
        return try withReadOnlyPointers(arrays, from: k + 1, acc + [ptr], body)
    }
}

enum DareSeed {
    static func value(_ p: MergeParameters, method: String) throws -> UInt64 {
        let d = try p.double("seed")
        guard d == d.rounded(), abs(d) < 9.007_199_254_740_992e15 else {
            throw TesseraError(.invalidParameter, "\(method): seed \(d) is not an integer", hint: "use an integer seed, e.g. seed: 42")
        }
        return UInt64(bitPattern: Int64(d))
    }
}
