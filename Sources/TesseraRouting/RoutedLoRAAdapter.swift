import Foundation
import TesseraEngine
import TesseraIO
import TesseraMath

/// The experts of a library on one projection, weighted per token by a router: for each module the projection runs
/// (a fused projection runs several: q, k, v), the router weighs the experts adapting it from the layer's own input
/// rows, and the experts' deltas are mixed after (outputs) or before (parameters), as `mixing` says.
///
/// Per call, two products whatever the number of experts, as `LoRAProjectionAdapter` does: every expert's A of every
/// module stacked gives h = x·Aᵀ for all of them at once; the router's weights then scale h's columns per row
/// (merge-after: wₑ·hₑ; merge-before: each expert's columns become wₑ·Σ_f w_f·h_f, the mixed A applied), and one
/// product with every expert's s·B adds the mixture to the rows each module covers. s·B is stored transposed,
/// [Σ rank, rows]: one token then reads each chosen expert's B as `rank` contiguous rows (decoding is bound by
/// memory traffic, and PEFT's [rows, rank] layout would fetch a cache line per output row for 32 bytes of it).
public final class RoutedLoRAAdapter: ProjectionAdapter, @unchecked Sendable {
    /// One expert's factors on one module.
    public struct ExpertFactors: Sendable {
        /// Library index.
        public var expert: Int
        public var rank: Int
        /// [rank, inputs]
        public var a: [Float]
        /// [module rows, rank], in the projection's row order.
        public var b: [Float]
        public var scaling: Float

        public init(expert: Int, rank: Int, a: [Float], b: [Float], scaling: Float) {
            self.expert = expert
            self.rank = rank
            self.a = a
            self.b = b
            self.scaling = scaling
        }
    }

    /// One routed module on this projection: the output rows it covers and its experts (ascending library index).
    public struct Group: Sendable {
        public var module: RoutedModule
        public var rows: Range<Int>
        public var experts: [ExpertFactors]

        public init(module: RoutedModule, rows: Range<Int>, experts: [ExpertFactors]) {
            self.module = module
            self.rows = rows
            self.experts = experts
        }
    }

    public let inputs: Int
    public let outputs: Int
    public let groups: [Group]
    public let router: ExpertRouter
    public let context: RoutingContext
    public let mixing: ExpertMixing
    /// Σ rank over every group's experts.
    public let totalRank: Int
    /// Per group, per expert: the first column of its rank in h.
    private let columns: [[Int]]
    private let maxRank: [Int]
    /// Per group, per expert: its rank.
    private let ranks: [[Int]]
    /// One token's scratch: per group, where its weights (one per expert) and its merge-before mixture (max rank) start.
    private let weightOffsets: [Int], weightCount: Int, mixedOffsets: [Int], mixedCount: Int
    /// One token: the output rows (within `span`) each core adds the chosen experts to.
    private let rowSlices: [Range<Int>]
    private let stackedA: [Float]
    private let span: Range<Int>
    /// [totalRank, span.count]: each expert's (s·B)ᵀ in its rank's rows and its module's columns, zero elsewhere.
    private let transposedB: [Float]

    public init(inputs: Int, outputs: Int, groups: [Group], router: ExpertRouter, context: RoutingContext, mixing: ExpertMixing,
                name: String) throws {
        guard !groups.isEmpty else {
            throw TesseraError(.invalidParameter, "\(name): a routed projection needs at least one module", hint: "check the library")
        }
        var total = 0, columns: [[Int]] = [], maxRank: [Int] = []
        for g in groups {
            guard !g.experts.isEmpty, g.module.experts == g.experts.map(\.expert), g.module.inputs == inputs,
                  !g.rows.isEmpty, g.rows.lowerBound >= 0, g.rows.upperBound <= outputs else {
                throw TesseraError(.shapeMismatch, "\(name): module '\(g.module.name)' does not fit the projection (\(inputs) inputs, \(outputs) outputs)",
                                   hint: "the library was made for another model")
            }
            var c: [Int] = []
            for e in g.experts {
                guard e.rank > 0, e.a.count == e.rank * inputs, e.b.count == e.rank * g.rows.count, e.scaling.isFinite else {
                    throw TesseraError(.shapeMismatch, "\(name): an expert's factors on '\(g.module.name)' do not fit it", hint: "the library was made for another model")
                }
                c.append(total)
                let (sum, overflow) = total.addingReportingOverflow(e.rank)
                guard !overflow else { throw TesseraError(.invalidParameter, "\(name): the experts' ranks overflow", hint: "check the library") }
                total = sum
            }
            columns.append(c)
            maxRank.append(g.experts.map(\.rank).max() ?? 0)
        }
        self.inputs = inputs
        self.outputs = outputs
        self.groups = groups
        self.router = router
        self.context = context
        self.mixing = mixing
        self.columns = columns
        self.maxRank = maxRank
        ranks = groups.map { $0.experts.map(\.rank) }
        let counts = groups.map(\.experts.count)
        weightOffsets = counts.indices.map { counts[..<$0].reduce(0, +) }
        weightCount = counts.reduce(0, +)
        mixedOffsets = maxRank.indices.map { maxRank[..<$0].reduce(0, +) }
        mixedCount = maxRank.reduce(0, +)
        totalRank = total
        var stacked: [Float] = []
        stacked.reserveCapacity(total * inputs)
        for g in groups { for e in g.experts { stacked += e.a } }
        stackedA = stacked
        let low = groups.map(\.rows.lowerBound).min() ?? 0, high = groups.map(\.rows.upperBound).max() ?? 0
        span = low..<high
        // Slices of at least 128 rows (below that a slice costs more to hand over than to compute), one per core.
        let cores = max(1, min(ProcessInfo.processInfo.activeProcessorCount, (high - low) / 128))
        let size = ((high - low) + cores - 1) / cores
        rowSlices = (0..<cores).map { c in min(high, low + c * size)..<min(high, low + (c + 1) * size) }.filter { !$0.isEmpty }
        var b = [Float](repeating: 0, count: total * span.count)
        for (gi, g) in groups.enumerated() {
            for (ei, e) in g.experts.enumerated() {
                for k in 0..<e.rank {
                    let row = (columns[gi][ei] + k) * span.count + g.rows.lowerBound - low
                    for r in 0..<g.rows.count { b[row + r] = e.scaling * e.b[r * e.rank + k] }
                }
            }
        }
        transposedB = b
    }

    public func addDelta(to output: UnsafeMutablePointer<Float>, outputStride: Int, input: UnsafePointer<Float>, inputStride: Int,
                         rows: Int, projection: Projection) {
        guard rows > 0, projection.inputs == inputs, projection.outputs == outputs else { return }
        if rows == 1 {
            addDeltaOneToken(to: output, input: input)
            return
        }
        let h = UnsafeMutablePointer<Float>.allocate(capacity: rows * totalRank)
        defer { h.deallocate() }
        stackedA.withUnsafeBufferPointer { a in
            guard let a = a.baseAddress else { return }
            Linalg.sgemm(transposeB: true, m: rows, n: totalRank, k: inputs, input, lda: inputStride, a, ldb: inputs, h, ldc: totalRank)
        }
        for (gi, g) in groups.enumerated() {
            let e = g.experts.count
            let weights = UnsafeMutablePointer<Float>.allocate(capacity: rows * e)
            defer { weights.deallocate() }
            weights.initialize(repeating: 0, count: rows * e)
            router.route(input, stride: inputStride, rows: rows, module: g.module, context: context, into: weights)
            mix(h, rows: rows, group: gi, weights: weights)
        }
        transposedB.withUnsafeBufferPointer { b in
            guard let b = b.baseAddress else { return }
            Linalg.sgemm(m: rows, n: span.count, k: totalRank, h, lda: totalRank, b, ldb: span.count, beta: 1,
                         output + span.lowerBound, ldc: outputStride)
        }
    }

    /// One token (decoding): only the experts the router chose are computed (top-k leaves the others at weight 0), by
    /// hand rather than through BLAS (a few thousand multiply-adds per chosen expert), in two parallel passes on the
    /// engine's spinning workers: one module per iteration routes and forms its chosen experts' columns of h; then
    /// each core adds, for a slice of the output rows, every chosen column times its row of (s·B)ᵀ. Decoding is
    /// bound by memory traffic, and one core alone leaves the other spinning while it reads the experts.
    private func addDeltaOneToken(to output: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>) {
        // Scratch on the stack of this call: every group's weights and merge-before mixture, and h (every expert's
        // columns; only the chosen ones are written and read).
        withUnsafeTemporaryAllocation(of: Float.self, capacity: weightCount + totalRank + mixedCount) { scratch in
            guard let base = scratch.baseAddress else { return }
            let allWeights = base, h = base + weightCount, allMixed = base + weightCount + totalRank
            stackedA.withUnsafeBufferPointer { aBuffer in
              transposedB.withUnsafeBufferPointer { bBuffer in
                guard let a = aBuffer.baseAddress, let b = bBuffer.baseAddress else { return }
                Parallel.forEach(groups.count) { gi in
                    let g = groups[gi], e = g.experts.count, cols = columns[gi], ranks = self.ranks[gi]
                    let weights = allWeights + weightOffsets[gi]
                    weights.update(repeating: 0, count: e)
                    router.route(input, stride: inputs, rows: 1, module: g.module, context: context, into: weights)
                    for j in 0..<e where weights[j] != 0 {
                        VectorKernels.dotRows(a + cols[j] * inputs, lda: inputs, rows: ranks[j], input, count: inputs, into: h + cols[j])
                    }
                    switch mixing {
                    case .mergeAfter:
                        for j in 0..<e where weights[j] != 0 { for k in 0..<ranks[j] { h[cols[j] + k] *= weights[j] } }
                    case .mergeBefore:
                        let mixed = allMixed + mixedOffsets[gi]
                        mixed.update(repeating: 0, count: maxRank[gi])
                        for j in 0..<e where weights[j] != 0 { for k in 0..<ranks[j] { mixed[k] += weights[j] * h[cols[j] + k] } }
                        for j in 0..<e where weights[j] != 0 { for k in 0..<ranks[j] { h[cols[j] + k] = weights[j] * mixed[k] } }
                    }
                }
                let width = span.count, slices = rowSlices.count
                Parallel.forEach(slices) { c in
                    let slice = rowSlices[c]
                    for (gi, g) in groups.enumerated() {
                        let lo = max(g.rows.lowerBound, slice.lowerBound), hi = min(g.rows.upperBound, slice.upperBound)
                        guard lo < hi else { continue }
                        let weights = allWeights + weightOffsets[gi], cols = columns[gi], ranks = self.ranks[gi]
                        for j in 0..<g.experts.count where weights[j] != 0 {
                            VectorKernels.axpyRows(b + cols[j] * width + (lo - span.lowerBound), ldb: width, rows: ranks[j],
                                                   coefficients: h + cols[j], into: output + lo, count: hi - lo)
                        }
                    }
                }
              }
            }
        }
    }

    /// Applies one group's routing weights to its columns of h, row by row.
    private func mix(_ h: UnsafeMutablePointer<Float>, rows: Int, group gi: Int, weights: UnsafePointer<Float>) {
        let g = groups[gi], e = g.experts.count, cols = columns[gi]
        switch mixing {
        case .mergeAfter:
            for t in 0..<rows {
                let row = h + t * totalRank
                for j in 0..<e {
                    let w = weights[t * e + j]
                    for k in 0..<g.experts[j].rank { row[cols[j] + k] *= w }
                }
            }
        case .mergeBefore:
            let r = maxRank[gi]
            var mixed = [Float](repeating: 0, count: r)
            for t in 0..<rows {
                let row = h + t * totalRank
                for k in 0..<r { mixed[k] = 0 }
                for j in 0..<e {
                    let w = weights[t * e + j]
                    for k in 0..<g.experts[j].rank { mixed[k] += w * row[cols[j] + k] }
                }
                for j in 0..<e {
                    let w = weights[t * e + j]
                    for k in 0..<g.experts[j].rank { row[cols[j] + k] = w * mixed[k] }
                }
            }
        }
    }
}
