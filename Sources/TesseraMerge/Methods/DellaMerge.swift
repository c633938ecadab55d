import TesseraCore
import TesseraIO
import TesseraMath

/// `della` (Deep, Bhatt et al. 2024, "DELLA-Merging"), as mergekit 0.1.5 runs it: mergekit's generalized task
/// arithmetic with DELLA's MAGPRUNE drop, then TIES's sign election (sum consensus):
///
///     δ_i = magprune(θ_i − θ_base)    keep each entry with a probability that grows with its magnitude rank:
///                                     p = (density − ε) + 2ε · (rank − 1)/(r − 1), ranks 1…r ascending by |δ|
///                                     within each row (along dimension 1; a 1-D tensor is one row)
///     rescale (default true): the survivors are scaled so that ‖δ_i‖₁ is unchanged (mergekit's L1 rescale, not the
///     paper's per-entry 1/p)
///     then the weighted sign election and disjoint mean of `ties` (normalize: true by default), θ_base + λ·mixed.
///
/// Parameters per model: weight, density (default 1: nothing dropped), epsilon (default 0.15). mergekit requires
/// density ± epsilon to lie in (0, 1) whenever 0 < density < 1; Tessera refuses such a config in one line, as
/// mergekit does. Subtleties: for tensors of 3 or more dimensions mergekit ranks along dimension 1 (not the last);
/// a row of one element (shape [n, 1], or a 1-element vector) makes mergekit fail (its probability is 0/0), while
/// Tessera keeps such entries with probability `density`.
///
/// The draws are Tessera's seeded generator (`DropRNG`, `seed`, as for DARE), not torch's, so a merge replays from
/// its provenance but cannot reproduce mergekit's particular mask: only the structure matches.
public struct DellaMerge: MergeMethod {
    public static let name = "della"
    public static let summary = "magnitude-ranked random drop (MAGPRUNE) + L1 rescale, then TIES sign election"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = [
        CommonParameters.normalize(true), CommonParameters.rescale(true), CommonParameters.lambda, CommonParameters.seed,
        CommonParameters.consensus, CommonParameters.int8Mask,
    ]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight, CommonParameters.density, DellaMagprune.epsilonParameter]
    public init() {}

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let c = try TaskArithmeticKernel.consensus(input.parameters, method: Self.name)
        return try TaskArithmeticKernel.merge(&input, method: Self.name, sparsification: .dellaMagprune, consensus: c)
    }

    public func provenance(parameters: MergeParameters) -> [(String, String)] { DareProvenance.entries(parameters) }
}

/// DELLA's MAGPRUNE drop, as mergekit's `della_magprune` defines the keep probabilities, with `DropRNG`'s draws.
enum DellaMagprune {
    static let epsilonParameter = ParameterDefinition.number(
        "epsilon", 0.15, help: "DELLA: keep probabilities spread over density ± epsilon by magnitude rank")

    /// The model's epsilon, checked as mergekit checks it (only when 0 < density < 1): density ± epsilon in (0, 1).
    static func epsilon(_ p: MergeParameters, density: Double, model: Int, tensor: String, method: String) throws -> Double {
        let e = p.has("epsilon") ? try p.double("epsilon") : 0.15
        // A negative epsilon reverses the preference (mergekit runs it while density ± epsilon stay in (0, 1)).
        guard !e.isNaN, density + abs(e) < 1, density - abs(e) > 0 else {
            throw TesseraError(.invalidParameter,
                               "\(method): density ± epsilon must lie in (0, 1), but density is \(density) and epsilon \(e) for model \(model) (tensor '\(tensor)')",
                               hint: "choose epsilon below min(density, 1 − density) (epsilon defaults to 0.15), as mergekit requires")
        }
        return e
    }

    /// Zeroes entries of `x` (a tensor of `shape`) in place: within each row along dimension 1, the entry of
    /// ascending magnitude rank r (0-based, ties by lower index) of a row of `len` entries is kept with probability
    /// (density − ε) + 2ε · r/(len − 1) (density for a row of one entry). Entry j's draw is DropRNG's counter draw
    /// for flat index j under `key`, so the mask does not depend on the thread count.
    static func prune(_ x: inout [Float], shape: [Int], density: Double, epsilon: Double, key: UInt64) {
        let n = x.count
        guard n > 0 else { return }
        // mergekit views a 1-D tensor as [1, n] and ranks along dimension 1 of the rest.
        let outer = shape.count < 2 ? 1 : shape[0]
        let len = shape.count < 2 ? n : shape[1]
        let inner = shape.count < 2 ? 1 : n / max(1, outer * len)
        let groups = outer * inner
        let low = density - epsilon, span = 2 * epsilon
        let scale = 9_007_199_254_740_992.0  // 2^53, DropRNG's draws
        let golden = DropRNG.golden
        // One limit per rank, shared by every row.
        var limits = [UInt64](repeating: 0, count: len)
        for r in 0..<len {
            let p = len == 1 ? density : low + span * (Double(r) / Double(len - 1))
            limits[r] = UInt64((min(max(p, 0), 1) * scale).rounded(.down))
        }
        let chunks = n >= Parallel.minimumParallelCount ? min(groups, Parallel.chunksPerCore * 2) : 1
        x.withUnsafeMutableBufferPointer { xb in
            let xp = SharedMutablePointer(xb.baseAddress!)
            limits.withUnsafeBufferPointer { lb in
                let lp = SharedPointer(lb.baseAddress!)
                Parallel.forEach(chunks) { c in
                    let lo = groups * c / chunks, hi = groups * (c + 1) / chunks
                    // Two sort buffers and the four digit histograms, reused by every row of the chunk.
                    let front = UnsafeMutablePointer<UInt64>.allocate(capacity: len)
                    let back = UnsafeMutablePointer<UInt64>.allocate(capacity: len)
                    let counts = UnsafeMutablePointer<Int>.allocate(capacity: 4 * 256)
                    defer { front.deallocate(); back.deallocate(); counts.deallocate() }
                    for g in lo..<hi {
                        let o = g / inner, k = g % inner
                        let start = o &* len &* inner &+ k
                        forEachRank(xp, start: start, stride: inner, len: len,
                                    front: front, back: back, counts: counts) { r, position in
                            let j = start &+ position &* inner
                            let u = MergeKernels.mix64(key &+ UInt64(j &+ 1) &* golden) >> 11
                            if u >= lp[r] { xp[j] = 0 }
                        }
                    }
                }
            }
        }
    }

    /// Calls `body(rank, position)` for every entry of a row, ranks in ascending order of (magnitude key, position in
    /// the row): the order a comparison sort by (`MagnitudeSelect.key`, index) gives, since that pair is a total
    /// order.
    ///
    /// A comparison sort per row was three quarters of a DELLA merge; this is an LSD radix sort instead, linear in the
    /// row: words `key << 32 | position` go through stable passes of 8 key bits each, positions entering in
    /// ascending order, so equal keys stay by lower index. A pass whose digit is the same for the whole row is
    /// skipped, and the last pass hands each entry's rank (its slot) to `body` instead of storing it. Each slot is
    /// read once into a local before the store (the histogram and the buffers could alias as far as the compiler
    /// knows, which otherwise costs a reload per entry).
    @inline(__always)
    private static func forEachRank(_ xp: SharedMutablePointer<Float>, start: Int, stride: Int, len: Int,
                                    front: UnsafeMutablePointer<UInt64>, back: UnsafeMutablePointer<UInt64>,
                                    counts: UnsafeMutablePointer<Int>, _ body: (Int, Int) -> Void) {
        counts.initialize(repeating: 0, count: 4 * 256)
        for r in 0..<len {
            let key = MagnitudeSelect.key(xp[start &+ r &* stride])
            front[r] = UInt64(key) << 32 | UInt64(truncatingIfNeeded: r)
            counts[Int(key & 0xFF)] &+= 1
            counts[256 &+ Int((key >> 8) & 0xFF)] &+= 1
            counts[512 &+ Int((key >> 16) & 0xFF)] &+= 1
            counts[768 &+ Int(key >> 24)] &+= 1
        }
        // The passes that move something (bit p set): those whose digit is not the same for every entry.
        let first = front[0] >> 32
        var needed = 0
        for pass in 0..<4 where counts[256 &* pass &+ Int((first >> UInt64(8 &* pass)) & 0xFF)] != len {
            needed |= 1 << pass
        }
        if needed == 0 {
            // One key for the whole row: ranks are positions.
            for r in 0..<len { body(r, r) }
            return
        }
        let last = Int.bitWidth - 1 - needed.leadingZeroBitCount
        var src = front, dst = back
        for pass in 0...last where needed & (1 << pass) != 0 {
            let shift = UInt64(32 &+ 8 &* pass)
            let h = counts + 256 &* pass
            var sum = 0
            for d in 0..<256 { let t = h[d]; h[d] = sum; sum &+= t }
            if pass == last {
                for i in 0..<len {
                    let v = src[i]
                    let d = Int((v >> shift) & 0xFF)
                    let slot = h[d]
                    h[d] = slot &+ 1
                    body(slot, Int(truncatingIfNeeded: v & 0xFFFF_FFFF))
                }
            } else {
                for i in 0..<len {
                    let v = src[i]
                    let d = Int((v >> shift) & 0xFF)
                    let slot = h[d]
                    h[d] = slot &+ 1
                    dst[slot] = v
                }
                swap(&src, &dst)
            }
        }
    }
}
