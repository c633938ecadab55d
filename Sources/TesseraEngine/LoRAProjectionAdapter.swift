import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// LoRA layers on one projection, unmerged: for each adapted range of output rows (a slice of a fused projection,
/// or all of it), `y[rows] += s · B · (A · x)`, with A [r, inputs] and B [rows, r] as PEFT stores them. A Conv1D layer
/// (GPT-2, `fan_in_fan_out`) has the same A and B: only its stored base weight is transposed, which the engine
/// undid at load, so the delta of the output is the same product.
///
/// Per call, two products whatever the number of parts: the A factors of every part stacked into one [Σr, inputs]
/// matrix give `h = x · Aᵀ` for all parts at once, then one [span, Σr] matrix holding each part's `s · B` in its rows
/// and rank columns (zeros elsewhere) adds every part's delta to the rows they cover (`y[:, span] += h · Bᵀ`). A
/// product per part would triple the BLAS calls of a fused q/k/v projection, and each call costs a synchronisation of
/// OpenBLAS's threads that, on a loaded machine, outweighs its few multiply-adds. The [rows, Σr] intermediate lives
/// in a scratch buffer kept across calls (grown to the largest row count seen); a second thread calling while it is in
/// use gets a buffer of its own for that call.
///
/// `@unchecked Sendable`: the factors are immutable after `init`; the scratch buffer is guarded by `lock`.
public final class LoRAProjectionAdapter: ProjectionAdapter, @unchecked Sendable {
    /// One LoRA layer's factors on a range of the projection's output rows.
    public struct Part: Sendable {
        /// What the factors come from ("adapter: module"), for messages and listings.
        public var label: String
        /// Output rows of the projection the delta is added to.
        public var rows: Range<Int>
        public var rank: Int
        /// [rank, inputs], row-major.
        public var a: [Float]
        /// [rows.count, rank], row-major.
        public var b: [Float]
        public var scaling: Float

        public init(label: String, rows: Range<Int>, rank: Int, a: [Float], b: [Float], scaling: Float) {
            self.label = label
            self.rows = rows
            self.rank = rank
            self.a = a
            self.b = b
            self.scaling = scaling
        }
    }

    public let inputs: Int
    public let outputs: Int
    public let parts: [Part]
    /// Σ rank over the parts: the width of the `A · x` intermediate.
    public let totalRank: Int
    /// Every part's A, stacked: [totalRank, inputs].
    private let stackedA: [Float]
    /// The output rows some part covers (from the lowest to the highest).
    public let span: Range<Int>
    /// [span.count, totalRank]: part p's `scaling · B` at rows `p.rows - span.lowerBound`, columns of its rank.
    private let combinedB: [Float]

    private let lock = NSLock()
    private var scratch: UnsafeMutablePointer<Float>?
    private var scratchCapacity = 0

    /// Checks every part against the projection's shape (rows inside its outputs, A and B of the sizes they claim).
    public init(inputs: Int, outputs: Int, parts: [Part], name: String) throws {
        guard !parts.isEmpty else {
            throw TesseraError(.invalidParameter, "\(name): a LoRA adapter needs at least one module", hint: "check the adapter")
        }
        var total = 0, offsets: [Int] = []
        for p in parts {
            guard p.rank > 0, !p.rows.isEmpty, p.rows.lowerBound >= 0, p.rows.upperBound <= outputs else {
                throw TesseraError(.shapeMismatch, "\(p.label): rank \(p.rank) on output rows \(p.rows) does not fit \(name) (\(outputs) outputs)",
                                   hint: "the adapter was made for another model")
            }
            let (aCount, o1) = p.rank.multipliedReportingOverflow(by: inputs)
            let (bCount, o2) = p.rank.multipliedReportingOverflow(by: p.rows.count)
            guard !o1, !o2, p.a.count == aCount, p.b.count == bCount else {
                throw TesseraError(.shapeMismatch, "\(p.label): factors of \(p.a.count) and \(p.b.count) values do not make A [\(p.rank), \(inputs)] and B [\(p.rows.count), \(p.rank)]",
                                   hint: "the adapter file is malformed or made for another model")
            }
            guard p.scaling.isFinite else {
                throw TesseraError(.invalidParameter, "\(p.label): the scaling is not finite", hint: "check r and lora_alpha")
            }
            offsets.append(total)
            let (sum, o3) = total.addingReportingOverflow(p.rank)
            guard !o3 else { throw TesseraError(.invalidParameter, "\(name): the adapters' ranks overflow", hint: "check the adapters") }
            total = sum
        }
        self.inputs = inputs
        self.outputs = outputs
        self.parts = parts
        totalRank = total
        var stacked: [Float] = []
        stacked.reserveCapacity(total * inputs)
        for p in parts { stacked += p.a }
        stackedA = stacked
        let low = parts.map(\.rows.lowerBound).min() ?? 0, high = parts.map(\.rows.upperBound).max() ?? 0
        span = low..<high
        // Rows are within the projection's outputs (checked above) and every part's factors exist, so this is at most
        // outputs × Σr of values already held.
        var b = [Float](repeating: 0, count: span.count * total)
        for (p, offset) in zip(parts, offsets) {
            for r in 0..<p.rows.count {
                let row = (p.rows.lowerBound + r - low) * total + offset
                for k in 0..<p.rank { b[row + k] = p.scaling * p.b[r * p.rank + k] }
            }
        }
        combinedB = b
    }

    deinit { scratch?.deallocate() }

    public func addDelta(to output: UnsafeMutablePointer<Float>, outputStride: Int, input: UnsafePointer<Float>, inputStride: Int,
                         rows: Int, projection: Projection) {
        // The attach code builds one adapter per projection; another projection's shape would be a wrong product.
        guard rows > 0, projection.inputs == inputs, projection.outputs == outputs else { return }
        let count = rows * totalRank
        if lock.try() {
            defer { lock.unlock() }
            if scratchCapacity < count {
                scratch?.deallocate()
                scratch = .allocate(capacity: count)
                scratchCapacity = count
            }
            if let scratch { add(output, outputStride, input, inputStride, rows, intermediate: scratch) }
        } else {
            let own = UnsafeMutablePointer<Float>.allocate(capacity: count)
            defer { own.deallocate() }
            add(output, outputStride, input, inputStride, rows, intermediate: own)
        }
    }

    private func add(_ output: UnsafeMutablePointer<Float>, _ outputStride: Int, _ input: UnsafePointer<Float>, _ inputStride: Int,
                     _ rows: Int, intermediate h: UnsafeMutablePointer<Float>) {
        stackedA.withUnsafeBufferPointer { a in
          combinedB.withUnsafeBufferPointer { b in
            guard let a = a.baseAddress, let b = b.baseAddress else { return }
            if rows == 1 {
                // One token (decoding): a few thousand multiply-adds, less than what waking OpenBLAS's threads for
                // sgemv costs, so they run here on the calling thread.
                VectorKernels.dotRows(a, lda: inputs, rows: totalRank, input, count: inputs, into: h)
                let y = output + span.lowerBound, width = span.count
                withUnsafeTemporaryAllocation(of: Float.self, capacity: width) { delta in
                    guard let delta = delta.baseAddress else { return }
                    VectorKernels.dotRows(b, lda: totalRank, rows: width, h, count: totalRank, into: delta)
                    for o in 0..<width { y[o] += delta[o] }
                }
                return
            }
            // h [rows, Σr] = x · Aᵀ ; y[:, span] += h · (s·B)ᵀ
            Linalg.sgemm(transposeB: true, m: rows, n: totalRank, k: inputs, input, lda: inputStride, a, ldb: inputs, h, ldc: totalRank)
            Linalg.sgemm(transposeB: true, m: rows, n: span.count, k: totalRank, h, lda: totalRank, b, ldb: totalRank, beta: 1,
                         output + span.lowerBound, ldc: outputStride)
          }
        }
    }
}
