import Foundation
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
    /// A PhatGOOSE gate: the module's delta for token t is scaled by σ(g · x_t) (x before dropout).
    var gate: GateParameters? = nil
    /// A and B get no gradient (gate training: only the gate learns).
    var frozen = false
}

/// What a linear layer's forward keeps for its backward: per LoRA binding, h = drop(x) · Aᵀ [rows, r] and B in the
/// projection's row order.
final class LinearTape {
    var h: [TrainingBuffer] = []
    var b: [TrainingBuffer] = []
    /// Per binding, σ(g · x_t) [rows] when it is gated (h stays ungated).
    var sigma: [TrainingBuffer?] = []
}

/// A frozen linear layer with LoRA modules: y = x · Wᵀ + b + Σ s · (drop(x) · Aᵀ) · Bᵀ. The backward gives the
/// gradients of A and B (added to the module's) and of x, never of W or b. W and b are read from the engine's
/// `Projection` (its float32 copy, which exists for block-quantised GGUF bases too). A gated module (PhatGOOSE) has
/// its term scaled per token by σ(g · x_t) and adds the gate's gradient; a frozen one gives A and B none.
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
        Linalg.sgemmAcrossCores(transposeB: true, m: n, n: outputs, k: inputs, x, lda: inputs, projection.weightPointer, ldb: inputs,
                                beta: accumulate ? 1 : 0, y, ldc: outputs)
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
            // A gated module multiplies by σ ⊙ h; h itself is kept for the backward.
            let gated = binding.gate.map { Self.gateForward($0, x, h: h, rows: n, inputs: inputs, rank: r) }
            let product = gated?.gated ?? h
            Linalg.sgemm(transposeB: true, m: n, n: binding.rows.count, k: r, alpha: m.scaling, product.p, lda: r, b.p, ldb: r, beta: 1,
                         y + binding.rows.lowerBound, ldc: outputs)
            let sigma = gated?.sigma
            tape.h.append(h)
            tape.b.append(b)
            tape.sigma.append(sigma)
        }
        return tape
    }

    /// Adds the LoRA factors' gradients for `dy` [rows, outputs] and, when `dx` is given, writes (or adds) the
    /// gradient with respect to x [rows, inputs]. With `weightGradient` [outputs, inputs] (and `biasGradient`
    /// [outputs]), the frozen weight's own gradient is added there too: dW += dyᵀ · x (x undropped: dropout only
    /// feeds the LoRA term), one sgemm.
    func backward(_ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rows n: Int, tape: LinearTape, dropout: DropoutMasks?,
                  dx: UnsafeMutablePointer<Float>?, accumulate: Bool, weightGradient: UnsafeMutablePointer<Float>? = nil,
                  biasGradient: UnsafeMutablePointer<Float>? = nil) {
        guard n > 0 else { return }
        if let weightGradient {
            Linalg.sgemmAcrossCores(transposeA: true, m: outputs, n: inputs, k: n, dy, lda: outputs, x, ldb: inputs, beta: 1, weightGradient, ldc: inputs)
        }
        if let biasGradient {
            for t in 0..<n {
                let row = dy + t * outputs
                for j in 0..<outputs { biasGradient[j] += row[j] }
            }
        }
        if let dx {
            Linalg.sgemmAcrossCores(m: n, n: inputs, k: outputs, dy, lda: outputs, projection.weightPointer, ldb: inputs,
                                    beta: accumulate ? 1 : 0, dx, ldc: inputs)
        }
        guard !bindings.isEmpty else { return }
        let dropped = dropout.map { _ in TrainingBuffer(n * inputs) }
        let through = dropout.map { _ in TrainingBuffer(n * inputs) }
        for (i, binding) in bindings.enumerated() where i < tape.h.count {
            let m = binding.parameters, r = m.rank, outRows = binding.rows.count
            let h = tape.h[i], b = tape.b[i]
            let dys = dy + binding.rows.lowerBound
            if let gate = binding.gate, i < tape.sigma.count, let sigma = tape.sigma[i] {
                gatedBackward(binding, gate: gate, sigma: sigma, dys: dys, x: x, h: h, b: b, rows: n, dropout: dropout, through: through, dx: dx)
                continue
            }
            // ∂B = s · dysᵀ · h (projection row order), then into the module's own row order.
            if !binding.frozen {
                let gradientB = TrainingBuffer(outRows * r)
                Linalg.sgemm(transposeA: true, m: outRows, n: r, k: n, alpha: m.scaling, dys, lda: outputs, h.p, ldb: r, gradientB.p, ldc: r)
                let ordered = TrainingBuffer(outRows * r)
                Self.permuteRows(from: gradientB.p, to: ordered.p, rows: outRows, cols: r, heads: binding.ropeHeads, toProjection: false)
                m.gradientB.withUnsafeMutableBufferPointer { g in
                    for k in 0..<min(g.count, ordered.count) { g[k] += ordered.p[k] }
                }
            }
            // dh = s · dys · B [n, r]
            let dh = TrainingBuffer(n * r)
            Linalg.sgemm(m: n, n: r, k: outRows, alpha: m.scaling, dys, lda: outputs, b.p, ldb: r, dh.p, ldc: r)
            // ∂A = dhᵀ · drop(x)
            if !binding.frozen {
                var input = x
                if let dropout, let dropped {
                    dropout.apply(x, dropped.p, count: n * inputs, stream: binding.stream)
                    input = UnsafePointer(dropped.p)
                }
                m.gradientA.withUnsafeMutableBufferPointer { g in
                    guard let g = g.baseAddress else { return }
                    Linalg.sgemm(transposeA: true, m: r, n: inputs, k: n, dh.p, lda: r, input, ldb: inputs, beta: 1, g, ldc: inputs)
                }
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

    /// σ(g · x_t) for every row of x [rows, inputs], and h scaled row by row by it.
    static func gateForward(_ gate: GateParameters, _ x: UnsafePointer<Float>, h: TrainingBuffer, rows n: Int, inputs: Int,
                            rank r: Int) -> (sigma: TrainingBuffer, gated: TrainingBuffer) {
        let sigma = TrainingBuffer(n), gated = TrainingBuffer(n * r)
        gate.values.withUnsafeBufferPointer { g in
            guard let g = g.baseAddress else { return }
            Linalg.sgemm(transposeB: true, m: n, n: 1, k: inputs, x, lda: inputs, g, ldb: inputs, sigma.p, ldc: 1)
        }
        for t in 0..<n {
            let z = sigma.p[t]
            let s = 1 / (1 + expf(-z))
            sigma.p[t] = s
            for k in 0..<r { gated.p[t * r + k] = s * h.p[t * r + k] }
        }
        return (sigma, gated)
    }

    /// The backward of a gated module: y_rows += s · σ_t · B · h_t with h_t = A · drop(x_t) and σ_t = σ(g · x_t).
    /// u = s · dys · B [n, r]; ∂z_t = σ_t (1 − σ_t) ⟨u_t, h_t⟩; ∂g += Σ_t ∂z_t · x_t; the LoRA path sees σ_t · u_t;
    /// dx += mask ⊙ ((σ ⊙ u) · A) + ∂z ⊗ g. A and B get gradients only when not frozen.
    private func gatedBackward(_ binding: LoRABinding, gate: GateParameters, sigma: TrainingBuffer, dys: UnsafePointer<Float>,
                               x: UnsafePointer<Float>, h: TrainingBuffer, b: TrainingBuffer, rows n: Int, dropout: DropoutMasks?,
                               through: TrainingBuffer?, dx: UnsafeMutablePointer<Float>?) {
        let m = binding.parameters, r = m.rank, outRows = binding.rows.count
        let u = TrainingBuffer(n * r)
        Linalg.sgemm(m: n, n: r, k: outRows, alpha: m.scaling, dys, lda: outputs, b.p, ldb: r, u.p, ldc: r)
        let dz = TrainingBuffer(n)
        for t in 0..<n {
            var dot: Float = 0
            for k in 0..<r { dot += u.p[t * r + k] * h.p[t * r + k] }
            let s = sigma.p[t]
            dz.p[t] = s * (1 - s) * dot
            for k in 0..<r { u.p[t * r + k] *= s }
        }
        gate.gradient.withUnsafeMutableBufferPointer { g in
            guard let g = g.baseAddress else { return }
            Linalg.sgemm(transposeA: true, m: 1, n: inputs, k: n, dz.p, lda: 1, x, ldb: inputs, beta: 1, g, ldc: inputs)
        }
        var input = x
        let dropped = dropout.map { _ in TrainingBuffer(n * inputs) }
        if let dropout, let dropped, !binding.frozen {
            dropout.apply(x, dropped.p, count: n * inputs, stream: binding.stream)
            input = UnsafePointer(dropped.p)
        }
        if !binding.frozen {
            // ∂B = s · dysᵀ · (σ ⊙ h), into the module's row order; ∂A = (σ ⊙ u)ᵀ · drop(x).
            let gated = TrainingBuffer(n * r)
            for t in 0..<n {
                for k in 0..<r { gated.p[t * r + k] = sigma.p[t] * h.p[t * r + k] }
            }
            let gradientB = TrainingBuffer(outRows * r), ordered = TrainingBuffer(outRows * r)
            Linalg.sgemm(transposeA: true, m: outRows, n: r, k: n, alpha: m.scaling, dys, lda: outputs, gated.p, ldb: r, gradientB.p, ldc: r)
            Self.permuteRows(from: gradientB.p, to: ordered.p, rows: outRows, cols: r, heads: binding.ropeHeads, toProjection: false)
            m.gradientB.withUnsafeMutableBufferPointer { g in
                for k in 0..<min(g.count, ordered.count) { g[k] += ordered.p[k] }
            }
            m.gradientA.withUnsafeMutableBufferPointer { g in
                guard let g = g.baseAddress else { return }
                Linalg.sgemm(transposeA: true, m: r, n: inputs, k: n, u.p, lda: r, input, ldb: inputs, beta: 1, g, ldc: inputs)
            }
        }
        guard let dx else { return }
        m.a.withUnsafeBufferPointer { a in
            guard let a = a.baseAddress else { return }
            if let dropout, let through {
                Linalg.sgemm(m: n, n: inputs, k: r, u.p, lda: r, a, ldb: inputs, through.p, ldc: inputs)
                dropout.accumulate(through.p, into: dx, count: n * inputs, stream: binding.stream)
            } else {
                Linalg.sgemm(m: n, n: inputs, k: r, u.p, lda: r, a, ldb: inputs, beta: 1, dx, ldc: inputs)
            }
        }
        gate.values.withUnsafeBufferPointer { g in
            guard let g = g.baseAddress else { return }
            Linalg.sgemm(m: n, n: inputs, k: 1, dz.p, lda: 1, g, ldb: inputs, beta: 1, dx, ldc: inputs)
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
