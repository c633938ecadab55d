import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// A hook on a projection's output, called after the base product: `y += delta(x)` for every row. LoRA adapters
/// (`s · B · A · x`, unmerged), several of them weighted per token, or a routed mixture plug in here, in every
/// architecture at once: every linear layer of Llama, GPT-2, GPT-Neo and BERT is a `Projection`.
///
/// The adapter is called from the thread running the forward pass, between the projection's product and the next
/// operation; it may parallelise internally (`Parallel.forEach`). It must only add to `output`.
public protocol ProjectionAdapter: AnyObject {
    /// Adds the adapter's contribution to `rows` output rows. Input row t is `input + t · inputStride`
    /// (`projection.inputs` floats); output row t is `output + t · outputStride` (`projection.outputs` floats: every
    /// slice of a fused projection, see `projection.slices`).
    func addDelta(to output: UnsafeMutablePointer<Float>, outputStride: Int, input: UnsafePointer<Float>, inputStride: Int,
                  rows: Int, projection: Projection)
}

/// One linear layer: `y = x · Wᵀ (+ bias) (+ adapter delta)`, W row-major [outputs, inputs].
///
/// It holds its weights as float32 (products over many tokens go through sgemm) and, for a GGUF in Q4_1 or Q8_0,
/// also as the file's blocks, which single-token products (decoding) multiply directly; which one a single token
/// uses is decided once, when the projection is built (`singleTokenKernel`). A fused projection (Q/K/V, gate/up)
/// stacks the rows of several checkpoint tensors into one weight and names its output slices, so one product
/// computes all of them; an adapter sees the whole output row and finds its slice by name.
///
/// `final class @unchecked Sendable`: the weights are immutable after `init`. `adapter` is the only mutable state; set
/// it between forward passes, not during one.
public final class Projection: @unchecked Sendable {
    /// A named range of output rows (a fused projection's parts: "query", "key", "value"; "gate", "up").
    public struct Slice: Sendable, Equatable {
        public let name: String
        public let rows: Range<Int>
        /// The checkpoint tensor these rows come from.
        public let tensor: String
    }

    /// How one token (and, with AVX-512, up to `blockRowLimit` tokens) is multiplied.
    public enum Kernel: Sendable, Equatable {
        /// sgemv on the float32 weights.
        case float32
        /// The GGUF's Q4_1 or Q8_0 blocks (CKernels).
        case q4_1, q8_0
    }

    /// Where the projection sits, e.g. "layers.3.attention.qkv".
    public let name: String
    public let inputs: Int
    public let outputs: Int
    public let slices: [Slice]
    public let singleTokenKernel: Kernel
    public var hasBias: Bool { bias != nil }

    /// Each checkpoint tensor the projection holds, in order, with the output rows it fills (the slices of one tensor,
    /// e.g. GPT-2's c_attn as query, key and value, are consecutive: one range).
    public var tensorRows: [(tensor: String, rows: Range<Int>)] {
        var order: [String] = [], ranges: [String: Range<Int>] = [:]
        for s in slices {
            if let r = ranges[s.tensor] {
                ranges[s.tensor] = min(r.lowerBound, s.rows.lowerBound)..<max(r.upperBound, s.rows.upperBound)
            } else {
                ranges[s.tensor] = s.rows
                order.append(s.tensor)
            }
        }
        return order.compactMap { t in ranges[t].map { (t, $0) } }
    }
    /// Called after the base product of every forward pass; nil by default.
    public var adapter: (any ProjectionAdapter)?

    let weights: WeightBuffer
    let bias: WeightBuffer?
    private let blocks: BlockQuantizedMatrix?

    /// `weights` is [outputs, inputs] row-major; `blocks`, when given, holds the same values in GGUF blocks.
    init(name: String, inputs: Int, outputs: Int, slices: [Slice], weights: WeightBuffer, bias: WeightBuffer?,
         blocks: BlockQuantizedMatrix?) {
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.slices = slices
        self.weights = weights
        self.bias = bias
        if let blocks, blocks.rows == outputs, blocks.columns == inputs {
            self.blocks = blocks
            singleTokenKernel = blocks.format == .q4_1 ? .q4_1 : .q8_0
        } else {
            self.blocks = nil
            singleTokenKernel = .float32
        }
    }

    /// A float32 projection from its weights [outputs, inputs] row-major (and bias [outputs]): one slice named after
    /// `tensor`. For layers built outside a checkpoint (a routed layer checked on its own, a head).
    public convenience init(name: String, tensor: String, inputs: Int, outputs: Int, weights: [Float], bias: [Float]? = nil) throws {
        guard inputs > 0, outputs > 0, weights.count == inputs * outputs, bias.map({ $0.count == outputs }) ?? true else {
            throw TesseraError(.shapeMismatch, "\(name): \(weights.count) weights do not make a [\(outputs), \(inputs)] matrix",
                               hint: "check the layer's shape")
        }
        self.init(name: name, inputs: inputs, outputs: outputs, slices: [Slice(name: name, rows: 0..<outputs, tensor: tensor)],
                  weights: WeightBuffer(weights), bias: bias.map { WeightBuffer($0) }, blocks: nil)
    }

    /// The output rows of the slice named `name`.
    public func slice(_ name: String) -> Slice? { slices.first { $0.name == name } }

    /// The float32 weights, [outputs, inputs] row-major (valid while the projection lives).
    public var weightPointer: UnsafePointer<Float> { weights.p }
    /// The bias, [outputs], if the projection has one (valid while the projection lives).
    public var biasPointer: UnsafePointer<Float>? { bias?.p }

    /// Up to this many rows go through the GGUF blocks when the CPU has the several-token kernel (a scoring batch);
    /// more go through sgemm on the float32 copy, which then pays its packing over enough rows. Measured on one core:
    /// a 3072×576 Q4_1 layer is faster through the blocks up to 16 rows (0.70 against 1.02 ms), slower at 32; an
    /// output head of 49152 rows (sgemm packs its 113 MB float copy on every call) up to 32 rows (30 against 32 ms).
    var blockRowLimit: Int { outputs >= 16384 ? 32 : 16 }

    /// y[rows, outputs] = x[rows, inputs] · Wᵀ (+ bias), or y += that when `accumulate` (residual connections); then
    /// the adapter's delta. One row goes through the single-token kernel; a few rows through the blocks' several-token
    /// kernel when there is one; more through sgemm.
    public func apply(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        guard rows > 0 else { return }
        if rows == 1, let blocks {
            blocks.apply(x, y, accumulate: accumulate, threads: Linalg.threads)
        } else if let blocks, rows <= blockRowLimit, BlockQuantizedMatrix.multiTokenKernel {
            blocks.apply(x, tokens: rows, y, accumulate: accumulate, threads: Linalg.threads)
        } else if rows == 1 {
            Linalg.matvec(weights.p, x, y, rows: outputs, cols: inputs, beta: accumulate ? 1 : 0)
        } else {
            Linalg.matmulTransposedB(x, weights.p, y, m: rows, n: outputs, k: inputs, beta: accumulate ? 1 : 0)
        }
        if let bias { VectorKernels.addBias(y, bias.p, rows: rows, dim: outputs) }
        adapter?.addDelta(to: y, outputStride: outputs, input: x, inputStride: inputs, rows: rows, projection: self)
    }
}
