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
/// product with every expert's s·B adds the mixture to the rows each module covers.
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
    private let stackedA: [Float]
    private let span: Range<Int>
    /// [span.count, totalRank]: each expert's s·B in its module's rows and its rank's columns.
    private let combinedB: [Float]

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
        totalRank = total
        var stacked: [Float] = []
        stacked.reserveCapacity(total * inputs)
        for g in groups { for e in g.experts { stacked += e.a } }
        stackedA = stacked
        let low = groups.map(\.rows.lowerBound).min() ?? 0, high = groups.map(\.rows.upperBound).max() ?? 0
        span = low..<high
        var b = [Float](repeating: 0, count: span.count * total)
        for (gi, g) in groups.enumerated() {
            for (ei, e) in g.experts.enumerated() {
                for r in 0..<g.rows.count {
                    let row = (g.rows.lowerBound + r - low) * total + columns[gi][ei]
                    for k in 0..<e.rank { b[row + k] = e.scaling * e.b[r * e.rank + k] }
                }
            }
        }
        combinedB = b
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
        combinedB.withUnsafeBufferPointer { b in
            guard let b = b.baseAddress else { return }
            Linalg.sgemm(transposeB: true, m: rows, n: span.count, k: totalRank, h, lda: totalRank, b, ldb: totalRank, beta: 1,
                         output + span.lowerBound, ldc: outputStride)
        }
    }

    /// One token (decoding): the router first, then only the experts it chose (top-k leaves the others at weight 0),
    /// on the calling thread: a few thousand multiply-adds per chosen expert, less than waking OpenBLAS's threads.
    private func addDeltaOneToken(to output: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>) {
        let widest = groups.map(\.experts.count).max() ?? 0, deepest = maxRank.max() ?? 0
        // Scratch on the stack of this call: weights, h (every expert's columns; only the chosen ones are read) and
        // the merge-before mixture.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: widest + totalRank + deepest) { scratch in
            guard let base = scratch.baseAddress else { return }
            let weights = base, h = base + widest, mixed = base + widest + totalRank
            stackedA.withUnsafeBufferPointer { aBuffer in
              combinedB.withUnsafeBufferPointer { bBuffer in
                guard let a = aBuffer.baseAddress, let b = bBuffer.baseAddress else { return }
                for (gi, g) in groups.enumerated() {
                    let e = g.experts.count, cols = columns[gi]
                    weights.update(repeating: 0, count: e)
                    router.route(input, stride: inputs, rows: 1, module: g.module, context: context, into: weights)
                    var any = false
                    for j in 0..<e where weights[j] != 0 {
                        any = true
                        for k in 0..<g.experts[j].rank { h[cols[j] + k] = RoutingMath.dot(a + (cols[j] + k) * inputs, input, count: inputs) }
                    }
                    guard any else { continue }
                    switch mixing {
                    case .mergeAfter:
                        for j in 0..<e where weights[j] != 0 { for k in 0..<g.experts[j].rank { h[cols[j] + k] *= weights[j] } }
                    case .mergeBefore:
                        mixed.update(repeating: 0, count: maxRank[gi])
                        for j in 0..<e where weights[j] != 0 { for k in 0..<g.experts[j].rank { mixed[k] += weights[j] * h[cols[j] + k] } }
                        for j in 0..<e where weights[j] != 0 { for k in 0..<g.experts[j].rank { h[cols[j] + k] = weights[j] * mixed[k] } }
                    }
                    for o in g.rows {
                        let row = b + (o - span.lowerBound) * totalRank
                        var sum: Float = 0
                        for j in 0..<e where weights[j] != 0 { sum += RoutingMath.dot(row + cols[j], h + cols[j], count: g.experts[j].rank) }
                        output[o] += sum
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
