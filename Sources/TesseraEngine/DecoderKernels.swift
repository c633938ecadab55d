import Foundation

/// The building blocks shared by the decoder architectures: linear layers, norms, activations, RoPE and causal
/// attention over a KV cache. Activations are row-major [tokens, features]; weights are row-major [out, in].
enum DecoderKernels {
    /// out[T, outDim] = x[T, inDim] · Wᵀ (+ bias) (+ out if accumulate). One token goes through sgemv, more through sgemm.
    @inline(__always)
    static func linear(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                       _ out: UnsafeMutablePointer<Float>, tokens: Int, inDim: Int, outDim: Int, accumulate: Bool = false) {
        let beta: Float = accumulate ? 1 : 0
        if tokens == 1 {
            Linalg.matvec(w, x, out, rows: outDim, cols: inDim, beta: beta)
        } else {
            Linalg.matmulTransposedB(x, w, out, m: tokens, n: outDim, k: inDim, beta: beta)
        }
        if let bias {
            for t in 0..<tokens {
                let row = out + t * outDim
                for j in 0..<outDim { row[j] += bias[j] }
            }
        }
    }

    /// RMSNorm: y = x / sqrt(mean(x²) + eps) · weight, per row.
    static func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                        rows: Int, dim: Int, eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, yr = y + r * dim
            var sum: Float = 0
            for j in 0..<dim { sum += xr[j] * xr[j] }
            let inv = 1 / (sum / Float(dim) + eps).squareRoot()
            for j in 0..<dim { yr[j] = xr[j] * inv * weight[j] }
        }
    }

    /// LayerNorm: y = (x − mean) / sqrt(var + eps) · weight + bias, per row (biased variance, as PyTorch).
    static func layerNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ bias: UnsafePointer<Float>,
                          _ y: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, yr = y + r * dim
            var mean: Float = 0
            for j in 0..<dim { mean += xr[j] }
            mean /= Float(dim)
            var variance: Float = 0
            for j in 0..<dim { let c = xr[j] - mean; variance += c * c }
            let inv = 1 / (variance / Float(dim) + eps).squareRoot()
            for j in 0..<dim { yr[j] = (xr[j] - mean) * inv * weight[j] + bias[j] }
        }
    }

    /// GELU, tanh approximation ("gelu_new" in Hugging Face GPT-2 / GPT-Neo configs).
    static func geluTanh(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let c: Float = 0.7978845608028654  // sqrt(2/π)
        for i in 0..<count {
            let v = x[i]
            x[i] = 0.5 * v * (1 + tanhf(c * (v + 0.044715 * v * v * v)))
        }
    }

    /// SwiGLU on a fused [T, 2·ffn] buffer laid out as (gate | up) per row: out[T, ffn] = silu(gate) · up.
    static func swiGLU(_ gateUp: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, tokens: Int, ffn: Int) {
        for t in 0..<tokens {
            let g = gateUp + t * 2 * ffn, u = g + ffn, o = out + t * ffn
            for j in 0..<ffn { o[j] = -g[j] }
            FastMath.expInPlace(o, count: ffn)
            for j in 0..<ffn { o[j] = g[j] / (1 + o[j]) * u[j] }
        }
    }

    /// Which elements RoPE rotates together.
    enum RoPELayout: Sendable {
        /// (x[2i], x[2i+1]): GGUF files whose converter permuted the Q/K rows (llama.cpp "normal" RoPE).
        case adjacentPairs
        /// (x[i], x[i + d/2]): Hugging Face checkpoints (`rotate_half`).
        case splitHalves
    }

    /// Cos/sin tables [positions, headDim/2], computed in float32 as Hugging Face does (inv_freq in float32, then
    /// position · inv_freq), so angles round the same way.
    static func ropeTables(positions: Int, headDim: Int, base: Float) -> (cos: [Float], sin: [Float]) {
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

    /// Rotates `heads` heads of each of `tokens` rows (row stride `ld`), row t at position `start + t`.
    static func applyRoPE(_ x: UnsafeMutablePointer<Float>, ld: Int, tokens: Int, heads: Int, headDim: Int, start: Int,
                          cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, layout: RoPELayout) {
        let half = headDim / 2
        for t in 0..<tokens {
            let c = cos + (start + t) * half, s = sin + (start + t) * half
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

    /// Causal multi-head attention for `tokens` new queries at positions start..<start+tokens over the cached keys and
    /// values 0..<start+tokens of one layer. Query head h reads KV head h / (heads / kvHeads) (grouped-query
    /// attention). `window`, if set, limits each query to the `window` most recent positions (GPT-Neo local layers).
    ///
    /// Several tokens: for each KV head and block of queries, the queries of all heads sharing that KV head are
    /// stacked into one matrix, so that one sgemm computes their scores against only the keys the block can see
    /// (causal), softmax runs across cores, and one sgemm applies the values. BLAS calls are never nested inside
    /// other parallel work (OpenBLAS threads would then contend). `scratch` needs `attentionScratchCount` floats.
    static func attention(
        q: UnsafePointer<Float>, ldq: Int, tokens: Int, start: Int,
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>, cacheCapacity: Int,
        heads: Int, kvHeads: Int, headDim: Int, scale: Float, window: Int?,
        scratch: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, ldo: Int
    ) {
        let group = heads / kvHeads
        if tokens == 1 {
            let length = start + 1
            let first = window.map { max(0, start - $0 + 1) } ?? 0
            for h in 0..<heads {
                let kvh = h / group
                let kh = keys + (kvh * cacheCapacity + first) * headDim
                let vh = values + (kvh * cacheCapacity + first) * headDim
                let n = length - first
                Linalg.matvec(kh, q + h * headDim, scratch, rows: n, cols: headDim, alpha: scale)
                softmaxInPlace(scratch, count: n)
                Linalg.matvecTransposed(vh, scratch, out + h * headDim, rows: n, cols: headDim)
            }
            return
        }
        let block = min(tokens, attentionBlock)
        let stacked = scratch                                   // [group · block, headDim] queries
        let result = scratch + group * block * headDim          // [group · block, headDim] outputs
        let scores = result + group * block * headDim           // [group · block, start + tokens]
        for kvh in 0..<kvHeads {
            let kh = keys + kvh * cacheCapacity * headDim
            let vh = values + kvh * cacheCapacity * headDim
            var t0 = 0
            while t0 < tokens {
                let rows = min(block, tokens - t0)
                let lastPosition = start + t0 + rows - 1
                let firstKey = window.map { max(0, start + t0 - $0 + 1) } ?? 0
                let length = lastPosition + 1 - firstKey
                for g in 0..<group {
                    let h = kvh * group + g
                    for r in 0..<rows {
                        (stacked + (g * rows + r) * headDim).update(from: q + (t0 + r) * ldq + h * headDim, count: headDim)
                    }
                }
                Linalg.matmulTransposedB(stacked, lda: headDim, kh + firstKey * headDim, ldb: headDim, scores, ldc: length,
                                         m: group * rows, n: length, k: headDim, alpha: scale)
                // Row i is query t0 + i % rows at position start + t0 + i % rows; it sees keys firstKey'...position.
                let softmaxRows = { (i: Int) in
                    let row = scores + i * length
                    let position = start + t0 + i % rows
                    let lo = (window.map { max(0, position - $0 + 1) } ?? 0) - firstKey
                    let hi = position - firstKey  // inclusive
                    for j in 0..<lo { row[j] = 0 }
                    softmaxInPlace(row + lo, count: hi - lo + 1)
                    for j in (hi + 1)..<length { row[j] = 0 }
                }
                let totalRows = group * rows
                if totalRows * length >= 16384 {
                    let chunks = 4
                    parallelFor(chunks) { c in
                        for i in stride(from: c, to: totalRows, by: chunks) { softmaxRows(i) }
                    }
                } else {
                    for i in 0..<totalRows { softmaxRows(i) }
                }
                Linalg.matmul(scores, lda: length, vh + firstKey * headDim, ldb: headDim, result, ldc: headDim,
                              m: totalRows, n: headDim, k: length)
                for g in 0..<group {
                    let h = kvh * group + g
                    for r in 0..<rows {
                        (out + (t0 + r) * ldo + h * headDim).update(from: result + (g * rows + r) * headDim, count: headDim)
                    }
                }
                t0 += rows
            }
        }
    }

    /// Query rows per attention block.
    static let attentionBlock = 128

    /// Floats of scratch `attention` needs.
    static func attentionScratchCount(tokens: Int, start: Int, heads: Int, kvHeads: Int, headDim: Int) -> Int {
        let group = heads / kvHeads
        let rows = min(tokens, attentionBlock) * group
        return 2 * rows * headDim + rows * (start + tokens) + (start + tokens)
    }

    /// Numerically stable softmax of `count` values in place.
    @inline(__always)
    static func softmaxInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        var maxValue = -Float.infinity
        for j in 0..<count where x[j] > maxValue { maxValue = x[j] }
        for j in 0..<count { x[j] -= maxValue }
        FastMath.expInPlace(x, count: count)
        var sum: Float = 0
        for j in 0..<count { sum += x[j] }
        let inv = 1 / sum
        for j in 0..<count { x[j] *= inv }
    }

    /// log-softmax of one logits row evaluated at one index: logit[i] − logsumexp(logits).
    static func logProbability(_ logits: UnsafePointer<Float>, count: Int, at index: Int) -> Float {
        var maxValue = -Float.infinity
        for j in 0..<count where logits[j] > maxValue { maxValue = logits[j] }
        var sum: Double = 0
        for j in 0..<count { sum += Double(expf(logits[j] - maxValue)) }
        return logits[index] - maxValue - Float(log(sum))
    }
}

/// Float scratch buffers reused across forward calls (no allocation per token once they have grown).
///
/// `final class @unchecked Sendable`: a scratch set belongs to one `DecoderState`, which one call uses at a time.
final class ScratchBuffers: @unchecked Sendable {
    private var buffers: [UnsafeMutablePointer<Float>?]
    private var sizes: [Int]

    init(slots: Int) {
        buffers = Array(repeating: nil, count: slots)
        sizes = Array(repeating: 0, count: slots)
    }

    deinit { for b in buffers { b?.deallocate() } }

    /// Slot `slot` with room for at least `count` floats (contents unspecified).
    func buffer(_ slot: Int, count: Int) -> UnsafeMutablePointer<Float> {
        if sizes[slot] < count {
            buffers[slot]?.deallocate()
            let n = max(count, sizes[slot] * 2)
            buffers[slot] = .allocate(capacity: n)
            sizes[slot] = n
        }
        return buffers[slot]!
    }
}

/// Runs `body(0..<n)` across cores. The body captures unsafe pointers, which are not `Sendable`; callers guarantee
/// that iterations write disjoint memory, which is what makes handing the closure to other threads safe.
func parallelFor(_ n: Int, _ body: (Int) -> Void) {
    withoutActuallyEscaping(body) { escapable in
        let sendable = unsafeBitCast(escapable, to: (@Sendable (Int) -> Void).self)
        DispatchQueue.concurrentPerform(iterations: n, execute: sendable)
    }
}

/// Fast exp for softmax and SiLU: Cephes' single-precision range reduction (x = n·ln2 + r, |r| ≤ ln2/2) and
/// degree-6 polynomial, relative error about 1.2e-7. Written as a branch-free scalar loop (rounding by adding and
/// subtracting 1.5·2²³) so the compiler vectorises it; about 3× faster than calling expf.
enum FastMath {
    static func expInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = exp(x[i]) }
    }

    @inline(__always)
    static func exp(_ v: Float) -> Float {
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
