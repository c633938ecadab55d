import CKernels
import Foundation

/// The elementwise and row-wise kernels the engine's architectures share: norms, activations, softmax, RoPE.
/// Activations are row-major [rows, features]. Callers pass buffers of the sizes they name.
public enum VectorKernels {
    /// Σ a[i]·b[i] in eight float32 lanes: the per-token products of LoRA factors and router vectors, too small to
    /// be worth a BLAS call.
    @inlinable @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var lanes = SIMD8<Float>()
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        var i = 0
        while i + 8 <= count {
            lanes += ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        var sum = lanes.sum()
        while i < count {
            sum += a[i] * b[i]
            i += 1
        }
        return sum
    }

    /// out[r] = a[r·lda ..< r·lda + n] · x for each of `rows` rows (CKernels, AVX-512 or AVX2 where present): one
    /// token through stacked LoRA A rows or router vectors.
    public static func dotRows(_ a: UnsafePointer<Float>, lda: Int, rows: Int, _ x: UnsafePointer<Float>, count n: Int,
                               into out: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        tessera_dot_rows(a, lda, rows, x, n, out)
    }

    /// y[i] += Σ_r coef[r]·b[r·ldb + i] for i in 0..<n (CKernels): a few scaled rows of a transposed LoRA B added
    /// to one output row.
    public static func axpyRows(_ b: UnsafePointer<Float>, ldb: Int, rows: Int, coefficients: UnsafePointer<Float>,
                                into y: UnsafeMutablePointer<Float>, count n: Int) {
        guard rows > 0, n > 0 else { return }
        tessera_axpy_rows(b, ldb, rows, coefficients, y, n)
    }

    /// RMSNorm: y = x / sqrt(mean(x²) + eps) · weight, per row (y may be x).
    public static func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                               rows: Int, dim: Int, eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, yr = y + r * dim
            var sum: Float = 0
            for j in 0..<dim { sum += xr[j] * xr[j] }
            let inv = 1 / (sum / Float(dim) + eps).squareRoot()
            for j in 0..<dim { yr[j] = xr[j] * inv * weight[j] }
        }
    }

    /// One row's LayerNorm statistics: its mean and 1 / sqrt(biased variance + eps), as PyTorch's. The forward and
    /// both backward passes (training) compute them this one way, so they agree to the bit.
    @inline(__always)
    public static func layerNormStatistics(_ row: UnsafePointer<Float>, dim: Int, eps: Float) -> (mean: Float, inverseDeviation: Float) {
        var mean: Float = 0
        for j in 0..<dim { mean += row[j] }
        mean /= Float(dim)
        var variance: Float = 0
        for j in 0..<dim { let c = row[j] - mean; variance += c * c }
        return (mean, 1 / (variance / Float(dim) + eps).squareRoot())
    }

    /// LayerNorm: y = (x − mean) / sqrt(var + eps) · weight + bias, per row, biased variance as PyTorch (y may be x).
    public static func layerNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ bias: UnsafePointer<Float>,
                                 _ y: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, yr = y + r * dim
            let (mean, inv) = layerNormStatistics(xr, dim: dim, eps: eps)
            for j in 0..<dim { yr[j] = (xr[j] - mean) * inv * weight[j] + bias[j] }
        }
    }

    /// x[r] += bias for every row.
    public static func addBias(_ x: UnsafeMutablePointer<Float>, _ bias: UnsafePointer<Float>, rows: Int, dim: Int) {
        for r in 0..<rows {
            let row = x + r * dim
            for j in 0..<dim { row[j] += bias[j] }
        }
    }

    /// The GELU variants of the checkpoints the engine reads.
    public enum GELU: Sendable {
        /// 0.5·x·(1 + erf(x/√2)) (BERT's "gelu").
        case erf
        /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) ("gelu_new", "gelu_pytorch_tanh").
        case tanh
    }

    /// GELU in place, split over the cores for large buffers (erf and tanh dominate the non-matmul time).
    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int, _ kind: GELU) {
        let chunks = count >= 65536 ? 4 : 1
        let perChunk = (count + chunks - 1) / chunks
        let p = SharedMutablePointer(x)
        let run = { (chunk: Int) in
            let lo = chunk * perChunk, hi = min(count, lo + perChunk)
            guard lo < hi else { return }
            switch kind {
            case .erf:
                let invSqrt2: Float = 0.70710678118654752
                for k in lo..<hi { let v = p[k]; p[k] = 0.5 * v * (1 + erff(v * invSqrt2)) }
            case .tanh:
                let c: Float = 0.7978845608028654  // √(2/π)
                for k in lo..<hi { let v = p[k]; p[k] = 0.5 * v * (1 + tanhf(c * (v + 0.044715 * v * v * v))) }
            }
        }
        if chunks == 1 { run(0) } else { Parallel.forEach(chunks, run) }
    }

    /// SwiGLU on a fused [T, 2·ffn] buffer laid out as (gate | up) per row: out[T, ffn] = silu(gate) · up.
    public static func swiGLU(_ gateUp: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, tokens: Int, ffn: Int) {
        let row = { (t: Int) in
            let g = gateUp + t * 2 * ffn
            tessera_silu_mul(g, g + ffn, out + t * ffn, ffn)
        }
        if tokens >= 16 {
            Parallel.forEach(4) { chunk in for t in stride(from: chunk, to: tokens, by: 4) { row(t) } }
        } else {
            for t in 0..<tokens { row(t) }
        }
    }

    /// Numerically stable softmax of `count` values in place.
    @inline(__always)
    public static func softmaxInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        // The maximum in C (Swift's SIMD pointwiseMax compiled to a branch per lane), the sum in sixteen lanes: a
        // scalar float sum is one dependent add per element (the compiler may not reorder it).
        let raw = UnsafeMutableRawPointer(x)
        let maxValue = tessera_max_f32(x, count)
        var j = 0
        for j in 0..<count { x[j] -= maxValue }
        FastMath.expInPlace(x, count: count)
        var sums = SIMD16<Float>()
        j = 0
        while j + 16 <= count {
            sums += raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self)
            j += 16
        }
        var sum = sums.sum()
        while j < count {
            sum += x[j]
            j += 1
        }
        let inv = 1 / sum
        for j in 0..<count { x[j] *= inv }
    }

    /// log-softmax of one logits row evaluated at one index: logit[i] − logsumexp(logits), the sum in double.
    public static func logProbability(_ logits: UnsafePointer<Float>, count: Int, at index: Int) -> Float {
        var maxValue = -Float.infinity
        for j in 0..<count where logits[j] > maxValue { maxValue = logits[j] }
        var sum: Double = 0
        for j in 0..<count { sum += Double(expf(logits[j] - maxValue)) }
        return logits[index] - maxValue - Float(log(sum))
    }

    /// Which elements RoPE rotates together.
    public enum RoPELayout: Sendable {
        /// (x[2i], x[2i+1]): GGUF files whose converter permuted the Q/K rows (llama.cpp "normal" RoPE).
        case adjacentPairs
        /// (x[i], x[i + d/2]): Hugging Face checkpoints (`rotate_half`).
        case splitHalves
    }

    /// Cos/sin tables [positions, headDim/2], computed in float32 as Hugging Face does (inv_freq in float32, then
    /// position · inv_freq), so angles round the same way.
    public static func ropeTables(positions: Int, headDim: Int, base: Float) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        var invFreq = [Float](repeating: 0, count: half)
        for i in 0..<half { invFreq[i] = 1 / powf(base, Float(2 * i) / Float(headDim)) }
        var c = [Float](repeating: 0, count: positions * half), s = c
        for p in 0..<positions {
            for i in 0..<half {
                let angle = Float(p) * invFreq[i]
                c[p * half + i] = cosf(angle)
                s[p * half + i] = sinf(angle)
            }
        }
        return (c, s)
    }

    /// Rotates `heads` heads of each of `tokens` rows (row stride `ld`), row t at position `positions[t]`.
    public static func applyRoPE(_ x: UnsafeMutablePointer<Float>, ld: Int, tokens: Int, heads: Int, headDim: Int,
                                 positions: UnsafePointer<Int>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
                                 layout: RoPELayout) {
        let half = headDim / 2
        for t in 0..<tokens {
            let c = cos + positions[t] * half, s = sin + positions[t] * half
            for h in 0..<heads {
                let v = x + t * ld + h * headDim
                switch layout {
                case .adjacentPairs:
                    for i in 0..<half {
                        let a = v[2 * i], b = v[2 * i + 1]
                        v[2 * i] = a * c[i] - b * s[i]
                        v[2 * i + 1] = a * s[i] + b * c[i]
                    }
                case .splitHalves:
                    for i in 0..<half {
                        let a = v[i], b = v[i + half]
                        v[i] = a * c[i] - b * s[i]
                        v[i + half] = b * c[i] + a * s[i]
                    }
                }
            }
        }
    }

    /// Reorders each head of each row from split halves (x0…x_{d/2−1}, x_{d/2}…) to interleaved pairs
    /// (x0, x_{d/2}, x1, x_{d/2+1}, …). Applied to Q and K after split-halves RoPE, it changes no dot product but makes
    /// the KV cache hold the same layout a GGUF (whose rows come pre-permuted) produces, so both checkpoint kinds sum
    /// Q·K in the same order and give the same logits.
    public static func interleaveHalves(_ x: UnsafeMutablePointer<Float>, ld: Int, tokens: Int, heads: Int, headDim: Int) {
        let half = headDim / 2
        withUnsafeTemporaryAllocation(of: Float.self, capacity: headDim) { tmp in
            guard let t = tmp.baseAddress else { return }
            for row in 0..<tokens {
                for h in 0..<heads {
                    let v = x + row * ld + h * headDim
                    t.update(from: v, count: headDim)
                    for i in 0..<half {
                        v[2 * i] = t[i]
                        v[2 * i + 1] = t[i + half]
                    }
                }
            }
        }
    }
}

/// Fast exp for softmax and SiLU: Cephes' single-precision range reduction (x = n·ln2 + r, |r| ≤ ln2/2) and
/// degree-6 polynomial, relative error about 1.2e-7. Written as a branch-free scalar loop (rounding by adding and
/// subtracting 1.5·2²³) so the compiler vectorises it; about 3× faster than calling expf.
public enum FastMath {
    public static func expInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = exp(x[i]) }
    }

    @inline(__always)
    public static func exp(_ v: Float) -> Float {
        var x = v < -87.33654 ? -87.33654 : (v > 88.72283 ? 88.72283 : v)
        let n = (x * 1.442_695_04 + 12_582_912) - 12_582_912
        x = x - n * 0.693_359_375 + n * 2.121_944_4e-4
        var p: Float = 1.987_569_15e-4
        p = p * x + 1.398_199_950_7e-3
        p = p * x + 8.333_451_907_3e-3
        p = p * x + 4.166_579_589_4e-2
        p = p * x + 1.666_666_545_9e-1
        p = p * x + 5.000_000_120_1e-1
        let y = p * x * x + x + 1
        return y * Float(bitPattern: UInt32(bitPattern: (Int32(n) &+ 127) &<< 23))
    }
}

/// The hand-vectorised C kernels (`Sources/CKernels`): block-format products, attention, SwiGLU gating.
public enum CPUKernels {
    /// Whether vector versions (AVX2 or AVX-512) run on this CPU (else portable C).
    public static var vectorised: Bool { tessera_kernels_vectorised() != 0 }

    /// "AVX-512", "AVX2" or "portable": the widest kernel set in use.
    public static var level: String {
        switch tessera_kernels_level() {
        case 2: return "AVX-512"
        case 1: return "AVX2"
        default: return "portable"
        }
    }

    /// Tests: run the portable versions even where vector ones are available, until as many `false` calls as `true`.
    public static func forcePortable(_ portable: Bool) { tessera_kernels_force_portable(portable ? 1 : 0) }

    /// Tests: run at most the AVX2 versions (where AVX-512 would be chosen), until as many `false` calls as `true`.
    public static func forceAVX2(_ avx2: Bool) { tessera_kernels_force_avx2(avx2 ? 1 : 0) }
}
