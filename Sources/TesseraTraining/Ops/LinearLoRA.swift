import TesseraEngine
import TesseraMath

/// One LoRA module bound to a range of a frozen projection's output rows (a slice of a fused projection, or all of
/// it). `ropeHeads` is set for a GGUF Llama's q_proj and k_proj, whose rows llama.cpp permuted for adjacent-pair
/// RoPE: the module's B rows are in Hugging Face order, so they are permuted the same way on the way in and their
/// gradient is permuted back on the way out.
struct LoRABinding {
    let parameters: LoRAModuleParameters
    let rows: Range<Int>
    let ropeHeads: Int?
    /// The dropout stream of this module (its index among the attached modules).
    let stream: UInt64
}

/// What a linear layer's forward keeps for its backward: per LoRA binding, h = drop(x) · Aᵀ [rows, r] and B in the
/// projection's row order.
final class LinearTape {
    var h: [TrainingBuffer] = []
    var b: [TrainingBuffer] = []
}

/// A frozen linear layer with LoRA modules: y = x · Wᵀ + b + Σ s · (drop(x) · Aᵀ) · Bᵀ. The backward gives the
/// gradients of A and B (added to the module's) and of x, never of W or b. W and b are read from the engine's
/// `Projection` (its float32 copy, which exists for block-quantised GGUF bases too).
final class LoRALinear {
    let projection: Projection
    var bindings: [LoRABinding] = []
    var inputs: Int { projection.inputs }
    var outputs: Int { projection.outputs }

    init(_ projection: Projection) { self.projection = projection }

    /// y [rows, outputs] = the layer applied to x [rows, inputs] (y += that when `accumulate`: a residual connection).
    func forward(_ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>, accumulate: Bool = false,
                 dropout: DropoutMasks?) -> LinearTape {
        let tape = LinearTape()
        guard n > 0 else { return tape }
        Linalg.matmulTransposedB(x, projection.weightPointer, y, m: n, n: outputs, k: inputs, beta: accumulate ? 1 : 0)
        if let bias = projection.biasPointer { VectorKernels.addBias(y, bias, rows: n, dim: outputs) }
        guard !bindings.isEmpty else { return tape }
        let dropped = dropout.map { _ in TrainingBuffer(n * inputs) }
        for binding in bindings {
            let m = binding.parameters, r = m.rank
            let h = TrainingBuffer(n * r), b = TrainingBuffer(binding.rows.count * r)
            var input = x
            if let dropout, let dropped {
                dropout.apply(x, dropped.p, count: n * inputs, stream: binding.stream)
                input = UnsafePointer(dropped.p)
            }
            m.a.withUnsafeBufferPointer { a in
                guard let a = a.baseAddress else { return }
                Linalg.sgemm(transposeB: true, m: n, n: r, k: inputs, input, lda: inputs, a, ldb: inputs, h.p, ldc: r)
            }
            m.b.withUnsafeBufferPointer { source in
                guard let source = source.baseAddress else { return }
                Self.permuteRows(from: source, to: b.p, rows: binding.rows.count, cols: r, heads: binding.ropeHeads, toProjection: true)
            }
            Linalg.sgemm(transposeB: true, m: n, n: binding.rows.count, k: r, alpha: m.scaling, h.p, lda: r, b.p, ldb: r, beta: 1,
                         y + binding.rows.lowerBound, ldc: outputs)
            tape.h.append(h)
            tape.b.append(b)
        }
        return tape
    }

    /// Adds the LoRA factors' gradients for `dy` [rows, outputs] and, when `dx` is given, writes (or adds) the
    /// gradient with respect to x [rows, inputs].
    func backward(_ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rows n: Int, tape: LinearTape, dropout: DropoutMasks?,
                  dx: UnsafeMutablePointer<Float>?, accumulate: Bool) {
        guard n > 0 else { return }
        if let dx {
            Linalg.sgemm(m: n, n: inputs, k: outputs, dy, lda: outputs, projection.weightPointer, ldb: inputs, beta: accumulate ? 1 : 0, dx, ldc: inputs)
        }
        guard !bindings.isEmpty else { return }
        let dropped = dropout.map { _ in TrainingBuffer(n * inputs) }
        let through = dropout.map { _ in TrainingBuffer(n * inputs) }
        for (i, binding) in bindings.enumerated() where i < tape.h.count {
            let m = binding.parameters, r = m.rank, outRows = binding.rows.count
            let h = tape.h[i], b = tape.b[i]
            let dys = dy + binding.rows.lowerBound
            // ∂B = s · dysᵀ · h (projection row order), then into the module's own row order.
            let gradientB = TrainingBuffer(outRows * r)
            Linalg.sgemm(transposeA: true, m: outRows, n: r, k: n, alpha: m.scaling, dys, lda: outputs, h.p, ldb: r, gradientB.p, ldc: r)
            let ordered = TrainingBuffer(outRows * r)
            Self.permuteRows(from: gradientB.p, to: ordered.p, rows: outRows, cols: r, heads: binding.ropeHeads, toProjection: false)
            m.gradientB.withUnsafeMutableBufferPointer { g in
                for k in 0..<min(g.count, ordered.count) { g[k] += ordered.p[k] }
            }
            // dh = s · dys · B [n, r]
            let dh = TrainingBuffer(n * r)
            Linalg.sgemm(m: n, n: r, k: outRows, alpha: m.scaling, dys, lda: outputs, b.p, ldb: r, dh.p, ldc: r)
            // ∂A = dhᵀ · drop(x)
            var input = x
            if let dropout, let dropped {
                dropout.apply(x, dropped.p, count: n * inputs, stream: binding.stream)
                input = UnsafePointer(dropped.p)
            }
            m.gradientA.withUnsafeMutableBufferPointer { g in
                guard let g = g.baseAddress else { return }
                Linalg.sgemm(transposeA: true, m: r, n: inputs, k: n, dh.p, lda: r, input, ldb: inputs, beta: 1, g, ldc: inputs)
            }
            // dx += mask ⊙ (dh · A)
            guard let dx else { continue }
            m.a.withUnsafeBufferPointer { a in
                guard let a = a.baseAddress else { return }
                if let dropout, let through {
                    Linalg.sgemm(m: n, n: inputs, k: r, dh.p, lda: r, a, ldb: inputs, through.p, ldc: inputs)
                    dropout.accumulate(through.p, into: dx, count: n * inputs, stream: binding.stream)
                } else {
                    Linalg.sgemm(m: n, n: inputs, k: r, dh.p, lda: r, a, ldb: inputs, beta: 1, dx, ldc: inputs)
                }
            }
        }
    }

    /// Copies a [rows, cols] matrix, permuting rows between Hugging Face order and a GGUF's RoPE row order when
    /// `heads` is set: within each head, GGUF row 2i + k holds Hugging Face row k · (headDim/2) + i.
    static func permuteRows(from source: UnsafePointer<Float>, to destination: UnsafeMutablePointer<Float>, rows: Int, cols: Int, heads: Int?,
                            toProjection: Bool) {
        guard let heads, heads > 0, rows % heads == 0, (rows / heads) % 2 == 0 else {
            destination.update(from: source, count: rows * cols)
            return
        }
        let headDim = rows / heads, half = headDim / 2
        for head in 0..<heads {
            for i in 0..<half {
                for k in 0..<2 {
                    let gguf = (head * headDim + 2 * i + k) * cols, hf = (head * headDim + k * half + i) * cols
                    if toProjection {
                        (destination + gguf).update(from: source + hf, count: cols)
                    } else {
                        (destination + hf).update(from: source + gguf, count: cols)
                    }
                }
            }
        }
    }
}
