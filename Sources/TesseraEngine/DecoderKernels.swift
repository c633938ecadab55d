import CKernels
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
        let chunks = count >= 65536 ? 4 : 1
        let perChunk = (count + chunks - 1) / chunks
        let run = { (chunk: Int) in
            for i in (chunk * perChunk)..<min(count, (chunk + 1) * perChunk) {
                let v = x[i]
                x[i] = 0.5 * v * (1 + tanhf(c * (v + 0.044715 * v * v * v)))
            }
        }
        if chunks == 1 { run(0) } else { parallelFor(chunks, run) }
    }

    /// SwiGLU on a fused [T, 2·ffn] buffer laid out as (gate | up) per row: out[T, ffn] = silu(gate) · up.
    static func swiGLU(_ gateUp: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, tokens: Int, ffn: Int) {
        let row = { (t: Int) in
            let g = gateUp + t * 2 * ffn
            tessera_silu_mul(g, g + ffn, out + t * ffn, ffn)
        }
        if tokens >= 16 {
            parallelFor(4) { chunk in for t in stride(from: chunk, to: tokens, by: 4) { row(t) } }
        } else {
            for t in 0..<tokens { row(t) }
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

    /// Rotates `heads` heads of each of `tokens` rows (row stride `ld`), row t at position `positions[t]`.
    static func applyRoPE(_ x: UnsafeMutablePointer<Float>, ld: Int, tokens: Int, heads: Int, headDim: Int, positions: UnsafePointer<Int>,
                          cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, layout: RoPELayout) {
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
    static func interleaveHalves(_ x: UnsafeMutablePointer<Float>, ld: Int, tokens: Int, heads: Int, headDim: Int) {
        let half = headDim / 2
        withUnsafeTemporaryAllocation(of: Float.self, capacity: headDim) { tmp in
            let t = tmp.baseAddress!
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

    /// Multi-head attention of `layout.tokens` new queries over the cached keys and values of one layer (the new
    /// tokens' own keys already stored at slots start..<start+tokens). Query head h reads KV head h / (heads / kvHeads)
    /// (grouped-query attention). Each query sees the keys `layout.visibleKeys` gives: causal over one sequence, or
    /// context + own segment when several continuations are scored in one pass; `window`, if set, keeps only the
    /// `window` most recent positions (GPT-Neo local layers).
    ///
    /// Several tokens: tiles of query rows sharing a KV head through `tessera_attend_tile` (CKernels), split over
    /// cores. One token: plain loops, heads in parallel. `scratch` needs `attentionScratchCount` floats.
    static func attention(
        q: UnsafePointer<Float>, ldq: Int, layout: TokenLayout,
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>, cacheCapacity: Int,
        heads: Int, kvHeads: Int, headDim: Int, scale: Float, window: Int?,
        scratch: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, ldo: Int
    ) {
        let group = heads / kvHeads
        let tokens = layout.tokens
        if tokens == 1 && layout.start == layout.contextEnd {
            // One token continuing its sequence (decoding): keys first...start are contiguous. Plain loops rather
            // than hundreds of tiny BLAS calls, which would each wake OpenBLAS's threads; heads run in parallel.
            let start = layout.start
            let first = layout.visibleKeys(0, window: window).context.lowerBound
            let n = start + 1 - first
            let perHead = { (h: Int) in
                let kvh = h / group
                let kh = keys + (kvh * cacheCapacity + first) * headDim
                let vh = values + (kvh * cacheCapacity + first) * headDim
                let qh = q + h * headDim, oh = out + h * headDim
                let sh = scratch + h * n
                for j in 0..<n {
                    let k = kh + j * headDim
                    var dot: Float = 0
                    for i in 0..<headDim { dot += qh[i] * k[i] }
                    sh[j] = dot * scale
                }
                softmaxInPlace(sh, count: n)
                for i in 0..<headDim { oh[i] = 0 }
                for j in 0..<n {
                    let v = vh + j * headDim, p = sh[j]
                    for i in 0..<headDim { oh[i] += p * v[i] }
                }
            }
            if heads > 1 && n * heads >= 2048 {
                parallelFor(heads, perHead)
            } else {
                for h in 0..<heads { perHead(h) }
            }
            return
        }
        // Several tokens: per KV head, its keys are transposed once; then tiles of up to 12 query rows (the heads of
        // the GQA group for a few consecutive tokens) go through `tessera_attend_tile`, which loads each key and value
        // once per tile. Tiles are split over cores. No BLAS: hundreds of small sgemm calls per layer cost more than
        // their arithmetic, and would wake OpenBLAS's threads.
        let span = layout.start + tokens
        let ldkt = span + 8
        let keysT = scratch  // [kvHeads][headDim][ldkt]
        let tileScores = scratch + kvHeads * headDim * ldkt
        let maxRows = 12
        let headsPerTile = min(group, maxRows)
        let tokensPerTile = max(1, maxRows / headsPerTile)
        let tokenTiles = (tokens + tokensPerTile - 1) / tokensPerTile
        let headTiles = (group + headsPerTile - 1) / headsPerTile
        let tilesPerKVHead = tokenTiles * headTiles
        let tiles = kvHeads * tilesPerKVHead
        let chunks = min(attentionChunks, tiles)
        // Every KV head's keys transposed (heads in parallel), then all tiles of all heads in one parallel pass: two
        // synchronisations per layer rather than two per KV head.
        parallelFor(kvHeads) { kvh in
            let kh = keys + kvh * cacheCapacity * headDim
            let khT = keysT + kvh * headDim * ldkt
            for d in 0..<headDim {
                let row = khT + d * ldkt
                for j in 0..<span { row[j] = kh[j * headDim + d] }
                for j in span..<ldkt { row[j] = 0 }
            }
        }
        parallelFor(chunks) { c in
            let chunkScores = tileScores + c * 2 * maxRows * (span + 8)
            withUnsafeTemporaryAllocation(of: UnsafePointer<Float>?.self, capacity: maxRows) { qs in
              withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<Float>?.self, capacity: maxRows) { outs in
                withUnsafeTemporaryAllocation(of: Int.self, capacity: 4 * maxRows) { ranges in
                    var index = c
                    while index < tiles {
                        let kvh = index / tilesPerKVHead, tile = index % tilesPerKVHead
                        let t0 = (tile / headTiles) * tokensPerTile, g0 = (tile % headTiles) * headsPerTile
                        var rows = 0
                        for t in t0..<min(tokens, t0 + tokensPerTile) {
                            let v = layout.visibleKeys(t, window: window)
                            for g in g0..<min(group, g0 + headsPerTile) {
                                let h = kvh * group + g
                                qs[rows] = q + t * ldq + h * headDim
                                outs[rows] = out + t * ldo + h * headDim
                                ranges[4 * rows] = v.context.lowerBound; ranges[4 * rows + 1] = v.context.upperBound
                                ranges[4 * rows + 2] = v.own.lowerBound; ranges[4 * rows + 3] = v.own.upperBound
                                rows += 1
                            }
                        }
                        tessera_attend_tile(rows, qs.baseAddress!, outs.baseAddress!, ranges.baseAddress!,
                                            keysT + kvh * headDim * ldkt, ldkt, values + kvh * cacheCapacity * headDim,
                                            headDim, scale, chunkScores)
                        index += chunks
                    }
                }
              }
            }
        }
    }

    /// Parallel chunks of attention tiles (a few per core, so uneven causal tiles even out).
    static let attentionChunks = 4

    /// Floats of scratch `attention` needs: transposed keys and per-chunk tile scores (several tokens), or a row
    /// of scores per head (one token).
    static func attentionScratchCount(tokens: Int, start: Int, heads: Int, kvHeads: Int, headDim: Int) -> Int {
        let span = start + tokens + 8
        return max(heads * span, kvHeads * headDim * span + attentionChunks * 2 * 12 * span)
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

/// Where the new tokens of a forward pass sit. Tokens are stored in the cache at slots start..<start+tokens. Token t
/// belongs to a segment beginning at token `segmentStarts[t]`; it sits at position contextEnd + (t − segmentStart)
/// (for RoPE / position embeddings) and sees the context slots 0..<contextEnd plus its own segment's slots up to
/// itself. A plain causal pass is one segment starting at token 0 with contextEnd = start.
struct TokenLayout {
    let tokens: Int
    let start: Int
    let contextEnd: Int
    let segmentStarts: [Int]
    let positions: [Int]

    /// One sequence continuing the cached one.
    init(causal tokens: Int, start: Int) {
        self.tokens = tokens
        self.start = start
        contextEnd = start
        segmentStarts = Array(repeating: 0, count: tokens)
        positions = (0..<tokens).map { start + $0 }
    }

    /// Several independent continuations of the cached context (slots 0..<start), concatenated.
    init(segments lengths: [Int], start: Int) {
        var starts: [Int] = [], positions: [Int] = []
        var offset = 0
        for m in lengths {
            for j in 0..<m { starts.append(offset); positions.append(start + j) }
            offset += m
        }
        tokens = offset
        self.start = start
        contextEnd = start
        segmentStarts = starts
        self.positions = positions
    }

    /// The cache slots token t may attend to: a context range and a range of its own segment (inclusive of itself).
    @inline(__always)
    func visibleKeys(_ t: Int, window: Int?) -> (context: Range<Int>, own: Range<Int>) {
        let offset = t - segmentStarts[t]
        let position = contextEnd + offset
        let ownStart = start + segmentStarts[t]
        guard let w = window else { return (0..<contextEnd, ownStart..<(start + t + 1)) }
        let earliest = position - w + 1  // earliest visible position
        let contextLow = min(contextEnd, max(0, earliest))
        return (contextLow..<contextEnd, (ownStart + max(0, offset - w + 1))..<(start + t + 1))
    }
}
