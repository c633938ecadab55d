import Foundation
import TesseraCore
import TesseraIO

/// Model-based clustering (MBC) of a library of LoRA experts, as mttl 1.0.2's `MBCWithCosSimTransform` defines it:
///
/// 1. Each expert's LoRA parameters flattened into one vector in mttl's layout: for every module, in ascending byte
///    order of the module names, lora_a = A_peftᵀ ([d_in, r], row-major) then lora_b = B_peftᵀ ([r, d_out]). The raw
///    factors, without the scaling (mttl flattens the parameters as stored).
/// 2. Sparsification: entries with |x| ≤ the `sparsity` quantile of that expert's |x| (numpy's default, linearly
///    interpolated quantile, computed here in double precision) are set to zero.
/// 3. Cosine similarity of the sparsified vectors, in double precision. mttl first projects the rows onto 64
///    components with a randomized TruncatedSVD; with at most 64 experts that projection keeps every inner product,
///    so the similarity is the same and Tessera skips it (for larger libraries Tessera's is that of the full vectors).
/// 4. k-means on the rows of the similarity matrix (sklearn's `KMeans` semantics: greedy k-means++ seeding with
///    2 + ⌊ln k⌋ candidates per centre, `restarts` runs, each of Lloyd iterations until the labels stop changing or
///    the centres move by at most `tolerance` × the mean per-column variance in total squared distance (at most
///    `maxIterations`), the run with the lowest inertia kept). Random draws come from SplitMix64 seeded with `seed`
///    (one stream through all restarts), so a seed gives the same clusters on every machine; they are not numpy's
///    draws, so cluster numbers can differ from mttl's (the partition is what to compare).
///
/// Choices where mttl is silent or would fail:
/// - Experts adapting different module sets are compared on the modules they all share (listed in `modules`); none
///   shared is an error. A shared module with different shapes in two experts (d_in, d_out or rank) is an error:
///   factor entries of different ranks do not correspond, so their cosine would be meaningless.
/// - A vector that is all zero after sparsification (an all-zero expert, or one whose entries all tie at the
///   threshold) has similarity 0 with every other expert and 1 with itself (numpy would give NaN).
/// - Clusters are numbered by their smallest member index; labels follow that numbering. With fewer distinct
///   similarity rows than k, some centres can stay empty: only non-empty clusters are reported.
public enum ExpertClustering {
    public struct Options: Sendable {
        /// Number of clusters (1 ≤ k ≤ number of experts).
        public var k: Int
        /// Fraction of each expert's entries zeroed, in [0, 1). mttl's `mbc_clustering.py` uses 0.5.
        public var sparsity: Double
        /// SplitMix64 seed of the k-means++ draws.
        public var seed: UInt64
        /// k-means runs from different seedings (sklearn's n_init).
        public var restarts: Int
        /// Lloyd iterations per run at most (sklearn's max_iter).
        public var maxIterations: Int
        /// Relative tolerance on the centres' movement (sklearn's tol).
        public var tolerance: Double

        public init(k: Int, sparsity: Double = 0.5, seed: UInt64 = 42, restarts: Int = 10, maxIterations: Int = 300, tolerance: Double = 1e-4) {
            self.k = k
            self.sparsity = sparsity
            self.seed = seed
            self.restarts = restarts
            self.maxIterations = maxIterations
            self.tolerance = tolerance
        }
    }

    public struct Result: Sendable {
        /// The experts' names, in input order.
        public var names: [String]
        /// Per expert, its cluster's index in `clusters`.
        public var labels: [Int]
        /// Member indices per cluster, clusters ordered by their smallest member, members ascending.
        public var clusters: [[Int]]
        /// Cosine similarities of the sparsified vectors, [n × n] row-major.
        public var similarity: [Double]
        /// Per expert, the magnitude at or below which entries were zeroed.
        public var thresholds: [Double]
        /// The modules compared (shared by every expert), in the flattening order.
        public var modules: [String]
        /// Entries per flattened vector.
        public var parameterCount: Int
        /// Sum of squared distances of the similarity rows to their cluster's centre.
        public var inertia: Double
    }

    /// Clusters `experts` (each a parsed PEFT adapter folder) as described above.
    public static func cluster(_ experts: [AdapterFolder], options: Options) throws -> Result {
        try check(options, count: experts.count)
        let modules = try sharedModules(experts)
        var vectors: [[Float]] = []
        var thresholds: [Double] = []
        for e in experts {
            var v = try parameterVector(e, modules: modules)
            thresholds.append(sparsify(&v, sparsity: options.sparsity))
            vectors.append(v)
        }
        let similarity = cosineSimilarity(vectors)
        let n = experts.count
        let rows = (0..<n).map { Array(similarity[($0 * n)..<($0 * n + n)]) }
        let km = kMeans(rows, k: options.k, restarts: options.restarts, seed: options.seed, maxIterations: options.maxIterations,
                        tolerance: options.tolerance)
        let (labels, clusters) = canonicalClusters(km.labels)
        return Result(names: experts.map(\.name), labels: labels, clusters: clusters, similarity: similarity, thresholds: thresholds,
                      modules: modules, parameterCount: vectors.first?.count ?? 0, inertia: km.inertia)
    }

    static func check(_ o: Options, count: Int) throws {
        guard count >= 1 else {
            throw TesseraError(.invalidParameter, "MBC needs at least one expert", hint: "add experts to the library")
        }
        guard o.k >= 1, o.k <= count else {
            throw TesseraError(.invalidParameter, "MBC: k = \(o.k) clusters for \(count) expert\(count == 1 ? "" : "s")",
                               hint: "choose k between 1 and the number of experts (\(count))")
        }
        guard o.sparsity.isFinite, o.sparsity >= 0, o.sparsity < 1 else {
            throw TesseraError(.invalidParameter, "MBC: sparsity \(o.sparsity) is outside [0, 1)", hint: "sparsity is the fraction of each expert's entries zeroed, e.g. 0.5")
        }
        guard o.restarts >= 1, o.restarts <= 1000, o.maxIterations >= 1, o.maxIterations <= 100_000 else {
            throw TesseraError(.invalidParameter, "MBC: restarts \(o.restarts) and iterations \(o.maxIterations) must be in 1...1000 and 1...100000",
                               hint: "the defaults are 10 restarts of at most 300 iterations")
        }
        guard o.tolerance.isFinite, o.tolerance >= 0 else {
            throw TesseraError(.invalidParameter, "MBC: tolerance \(o.tolerance) is not a number ≥ 0", hint: "the default is 1e-4")
        }
    }

    /// The modules every expert adapts, sorted by name (byte order), after checking their shapes agree.
    public static func sharedModules(_ experts: [AdapterFolder]) throws -> [String] {
        guard let first = experts.first else { return [] }
        var shared = Set(first.adapter.modules.map(\.name))
        for e in experts.dropFirst() { shared.formIntersection(e.adapter.modules.map(\.name)) }
        guard !shared.isEmpty else {
            throw TesseraError(.invalidParameter, "MBC: the experts share no adapted module (\(experts.map(\.name).joined(separator: ", ")))",
                               hint: "cluster experts that adapt the same layers of the same base model")
        }
        let names = shared.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        for name in names {
            guard let m0 = first.adapter.modules.first(where: { $0.name == name }) else { continue }
            for e in experts.dropFirst() {
                guard let m = e.adapter.modules.first(where: { $0.name == name }) else { continue }
                if m.inFeatures != m0.inFeatures || m.outFeatures != m0.outFeatures || m.isEmbedding != m0.isEmbedding {
                    throw TesseraError(.shapeMismatch, "MBC: module '\(name)' maps \(m.inFeatures) → \(m.outFeatures) features in \(e.name) but \(m0.inFeatures) → \(m0.outFeatures) in \(first.name)",
                                       hint: "cluster experts of the same base model")
                }
                if m.rank != m0.rank {
                    throw TesseraError(.shapeMismatch, "MBC: module '\(name)' has rank \(m.rank) in \(e.name) but \(m0.rank) in \(first.name): LoRA factors of different ranks cannot be compared entry by entry",
                                       hint: "cluster experts of equal rank (or re-extract them at one rank with tessera lora extract)")
                }
            }
        }
        return names
    }

    /// An expert's LoRA parameters over `modules`, flattened in mttl's layout (Aᵀ then Bᵀ per module), float32.
    public static func parameterVector(_ expert: AdapterFolder, modules: [String]) throws -> [Float] {
        var out: [Float] = []
        for name in modules {
            guard let m = expert.adapter.modules.first(where: { $0.name == name }) else {
                throw TesseraError(.notFound, "MBC: \(expert.name) does not adapt '\(name)'", hint: "compare the modules every expert adapts")
            }
            let (a, b) = try expert.factors(m)  // A [r, d_in], B [d_out, r]
            if let k = a.firstIndex(where: { !$0.isFinite }) ?? b.firstIndex(where: { !$0.isFinite }).map({ $0 + a.count }) {
                throw TesseraError(.invalidParameter, "MBC: \(expert.name): module '\(name)' has a value that is not finite (entry \(k) of its factors)",
                                   hint: "the adapter is damaged; retrain or re-extract it")
            }
            out.reserveCapacity(out.count + a.count + b.count)
            for j in 0..<m.inFeatures { for r in 0..<m.rank { out.append(a[r * m.inFeatures + j]) } }
            for r in 0..<m.rank { for o in 0..<m.outFeatures { out.append(b[o * m.rank + r]) } }
        }
        return out
    }

    /// numpy's default quantile (method "linear") of `sorted` (ascending) at q in [0, 1], with numpy's two-sided
    /// interpolation (from the upper neighbour when the fraction is ≥ 0.5), in double precision.
    public static func quantile(sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let h = Double(sorted.count - 1) * min(max(q, 0), 1)
        let lo = min(Int(h.rounded(.down)), sorted.count - 1)
        let hi = min(lo + 1, sorted.count - 1)
        let t = h - Double(lo)
        let a = sorted[lo], b = sorted[hi]
        if hi == lo { return a }
        return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t
    }

    /// Zeroes the entries with |x| ≤ the `sparsity` quantile of |x|; returns that threshold.
    @discardableResult
    public static func sparsify(_ x: inout [Float], sparsity: Double) -> Double {
        guard !x.isEmpty else { return 0 }
        let magnitudes = x.map { Double(abs($0)) }.sorted()
        let threshold = quantile(sorted: magnitudes, sparsity)
        for j in x.indices where Double(abs(x[j])) <= threshold { x[j] = 0 }
        return threshold
    }

    /// Cosine similarities of equally long vectors, [n × n] row-major, in double precision; a zero vector has
    /// similarity 0 with the others and 1 with itself.
    public static func cosineSimilarity(_ vectors: [[Float]]) -> [Double] {
        let n = vectors.count
        var out = [Double](repeating: 0, count: n * n)
        var norms = [Double](repeating: 0, count: n)
        for i in 0..<n { norms[i] = dot(vectors[i], vectors[i]).squareRoot() }
        for i in 0..<n {
            out[i * n + i] = 1
            for j in (i + 1)..<n {
                let d = norms[i] * norms[j]
                let c = d > 0 ? dot(vectors[i], vectors[j]) / d : 0
                out[i * n + j] = c
                out[j * n + i] = c
            }
        }
        return out
    }

    static func dot(_ x: [Float], _ y: [Float]) -> Double {
        var s = 0.0
        for j in 0..<min(x.count, y.count) { s += Double(x[j]) * Double(y[j]) }
        return s
    }

    // MARK: k-means

    public struct KMeansResult: Sendable {
        /// Per point, the index of its centre (as the run numbered them).
        public var labels: [Int]
        public var centers: [[Double]]
        public var inertia: Double
        /// Lloyd iterations of the kept run.
        public var iterations: Int
    }

    /// k-means of `points` (equal lengths, 1 ≤ k ≤ points.count) with k-means++ seeding, `restarts` runs, the lowest
    /// inertia kept (the first run on a tie).
    public static func kMeans(_ points: [[Double]], k: Int, restarts: Int, seed: UInt64, maxIterations: Int, tolerance: Double) -> KMeansResult {
        let n = points.count, dim = points.first?.count ?? 0
        // sklearn's tolerance: tol × the mean over columns of their variance.
        var meanVariance = 0.0
        if n > 0, dim > 0 {
            for c in 0..<dim {
                var mean = 0.0
                for p in points { mean += p[c] }
                mean /= Double(n)
                var v = 0.0
                for p in points { v += (p[c] - mean) * (p[c] - mean) }
                meanVariance += v / Double(n)
            }
            meanVariance /= Double(dim)
        }
        let tol = tolerance * meanVariance
        var rng = SplitMix64(seed: seed)
        var best: KMeansResult?
        for _ in 0..<max(1, restarts) {
            let centers = kMeansPlusPlus(points, k: k, rng: &rng)
            let run = lloyd(points, centers: centers, maxIterations: maxIterations, tol: tol)
            if let kept = best, !(run.inertia < kept.inertia) { continue }
            best = run
        }
        return best ?? KMeansResult(labels: [], centers: [], inertia: 0, iterations: 0)
    }

    static func distance2(_ x: [Double], _ y: [Double]) -> Double {
        var s = 0.0
        for c in 0..<min(x.count, y.count) { let d = x[c] - y[c]; s += d * d }
        return s
    }

    /// Greedy k-means++ (Arthur & Vassilvitskii 2007, with sklearn's 2 + ⌊ln k⌋ candidates per centre, the one that
    /// lowers the potential most kept): the first centre uniformly at random, each next one drawn with probability
    /// proportional to the squared distance to the nearest chosen centre.
    static func kMeansPlusPlus(_ points: [[Double]], k: Int, rng: inout SplitMix64) -> [[Double]] {
        let n = points.count
        guard n > 0, k > 0 else { return [] }
        let trials = 2 + Int(log(Double(k)))
        var chosen = [Int(rng.next() % UInt64(n))]
        var closest = points.map { distance2($0, points[chosen[0]]) }
        var potential = closest.reduce(0, +)
        while chosen.count < k {
            var bestCandidate = -1, bestPotential = Double.infinity, bestClosest: [Double] = []
            if potential <= 0 {
                // Every point sits on a chosen centre: take the first point not chosen yet (the centre stays empty
                // or duplicates another; only non-empty clusters are reported).
                bestCandidate = (0..<n).first { !chosen.contains($0) } ?? 0
                bestClosest = closest
            } else {
                var cumulative = [Double](repeating: 0, count: n)
                var running = 0.0
                for i in 0..<n { running += closest[i]; cumulative[i] = running }
                for _ in 0..<trials {
                    let target = rng.nextUnit() * potential
                    // The first index whose cumulative sum exceeds the draw (numpy's searchsorted, side left, on
                    // a draw that is never exactly a sum of positive terms but for measure zero).
                    var lo = 0, hi = n - 1
                    while lo < hi { let mid = (lo + hi) / 2; if cumulative[mid] <= target { lo = mid + 1 } else { hi = mid } }
                    var candidateClosest = closest
                    var pot = 0.0
                    for i in 0..<n {
                        candidateClosest[i] = min(closest[i], distance2(points[i], points[lo]))
                        pot += candidateClosest[i]
                    }
                    if pot < bestPotential { bestPotential = pot; bestCandidate = lo; bestClosest = candidateClosest }
                }
            }
            chosen.append(bestCandidate)
            closest = bestClosest
            potential = closest.reduce(0, +)
        }
        return chosen.map { points[$0] }
    }

    static func assign(_ points: [[Double]], _ centers: [[Double]]) -> (labels: [Int], distances: [Double]) {
        var labels = [Int](repeating: 0, count: points.count), distances = [Double](repeating: 0, count: points.count)
        for (i, p) in points.enumerated() {
            var best = 0, bestD = Double.infinity
            for (c, center) in centers.enumerated() {
                let d = distance2(p, center)
                if d < bestD { bestD = d; best = c }
            }
            labels[i] = best
            distances[i] = bestD
        }
        return (labels, distances)
    }

    /// Lloyd's iterations from `centers`. An empty cluster takes the point farthest from its centre (among points
    /// whose cluster has more than one member), as sklearn relocates empty clusters.
    static func lloyd(_ points: [[Double]], centers start: [[Double]], maxIterations: Int, tol: Double) -> KMeansResult {
        let k = start.count, dim = points.first?.count ?? 0
        var centers = start
        var (labels, distances) = assign(points, centers)
        var iterations = 0
        while iterations < maxIterations {
            iterations += 1
            var sums = [[Double]](repeating: [Double](repeating: 0, count: dim), count: k)
            var counts = [Int](repeating: 0, count: k)
            for (i, p) in points.enumerated() {
                counts[labels[i]] += 1
                for c in 0..<dim { sums[labels[i]][c] += p[c] }
            }
            for c in 0..<k where counts[c] == 0 {
                let far = points.indices.filter { counts[labels[$0]] > 1 }.max { distances[$0] < distances[$1] || (distances[$0] == distances[$1] && $0 > $1) }
                guard let far else { continue }
                let old = labels[far]
                counts[old] -= 1
                for d in 0..<dim { sums[old][d] -= points[far][d] }
                labels[far] = c
                distances[far] = 0
                counts[c] = 1
                sums[c] = points[far]
            }
            var shift = 0.0
            var next = centers
            for c in 0..<k where counts[c] > 0 {
                next[c] = sums[c].map { $0 / Double(counts[c]) }
                shift += distance2(next[c], centers[c])
            }
            centers = next
            let previous = labels
            (labels, distances) = assign(points, centers)
            if labels == previous || shift <= tol { break }
        }
        let inertia = distances.reduce(0, +)
        return KMeansResult(labels: labels, centers: centers, inertia: inertia, iterations: iterations)
    }

    /// Renumbers clusters by their smallest member; returns the labels and the members of each non-empty cluster.
    static func canonicalClusters(_ raw: [Int]) -> (labels: [Int], clusters: [[Int]]) {
        var renumber: [Int: Int] = [:]
        var clusters: [[Int]] = []
        var labels = [Int](repeating: 0, count: raw.count)
        for (i, l) in raw.enumerated() {
            if let c = renumber[l] {
                clusters[c].append(i)
                labels[i] = c
            } else {
                renumber[l] = clusters.count
                labels[i] = clusters.count
                clusters.append([i])
            }
        }
        return (labels, clusters)
    }
}
