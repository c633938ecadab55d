import Foundation
import TesseraCore

/// The pre-LayerNorm transformer block stack that GPT-2 and GPT-Neo share: learned position embeddings,
/// LN → attention (fused Q/K/V) → output projection, LN → FC → GELU → projection, final LN, tied output head.
/// The architectures differ only in names, biases, attention scaling and GPT-Neo's local attention windows, which
/// their own files set up.
struct LayerNormDecoderWeights {
    struct Layer {
        var ln1Weight: WeightBuffer, ln1Bias: WeightBuffer
        /// [3·d, d]: Q rows, then K, then V (weights stored [out, in]).
        var qkv: WeightBuffer
        var qkvBias: WeightBuffer?
        var attnOut: WeightBuffer, attnOutBias: WeightBuffer
        var ln2Weight: WeightBuffer, ln2Bias: WeightBuffer
        var fc: WeightBuffer, fcBias: WeightBuffer
        var proj: WeightBuffer, projBias: WeightBuffer
        /// nil: global causal attention; n: each query sees the n most recent positions (itself included).
        var window: Int?
    }

    var tokenEmbedding: WeightBuffer
    var positionEmbedding: WeightBuffer
    var layers: [Layer]
    var finalNormWeight: WeightBuffer, finalNormBias: WeightBuffer
    var head: WeightBuffer
}

struct LayerNormDecoderShape: Sendable {
    var vocabularySize: Int
    var hidden: Int
    var heads: Int
    var inner: Int
    var positions: Int
    var eps: Float
    /// Multiplier of the attention scores: 1/√headDim for GPT-2, 1 for GPT-Neo (which does not scale).
    var attentionScale: Float
    var headDim: Int { hidden / heads }
}

enum LayerNormDecoder {
    /// A row-major [rows, cols] matrix transposed to [cols, rows] (GPT-2's Conv1D stores weights [in, out]).
    static func transposed(_ m: [Float], rows: Int, cols: Int) -> [Float] {
        var out = [Float](repeating: 0, count: m.count)
        for r in 0..<rows { for c in 0..<cols { out[c * rows + r] = m[r * cols + c] } }
        return out
    }

    static func forward(_ tokens: [Int], state: DecoderState, layout: TokenLayout, logitRows: [Int], shape s: LayerNormDecoderShape,
                        weights w: LayerNormDecoderWeights) -> [Float] {
        let T = tokens.count, start = state.length
        let d = s.hidden, qkvDim = 3 * d
        let sc = state.scratch
        let x = sc.buffer(0, count: T * d), xn = sc.buffer(1, count: T * d)
        let qkv = sc.buffer(2, count: T * qkvDim), attn = sc.buffer(3, count: T * d)
        let hidden = sc.buffer(4, count: T * s.inner)
        let scores = sc.buffer(6, count: DecoderKernels.attentionScratchCount(tokens: T, start: start, heads: s.heads, kvHeads: s.heads, headDim: s.headDim))
        for (t, token) in tokens.enumerated() {
            let row = x + t * d, te = w.tokenEmbedding.p + token * d, pe = w.positionEmbedding.p + layout.positions[t] * d
            for j in 0..<d { row[j] = te[j] + pe[j] }
        }
        for (l, layer) in w.layers.enumerated() {
            DecoderKernels.layerNorm(x, layer.ln1Weight.p, layer.ln1Bias.p, xn, rows: T, dim: d, eps: s.eps)
            DecoderKernels.linear(xn, layer.qkv.p, bias: layer.qkvBias?.p, qkv, tokens: T, inDim: d, outDim: qkvDim)
            state.store(layer: l, keys: qkv + d, values: qkv + 2 * d, ld: qkvDim, tokens: T, start: start)
            DecoderKernels.attention(
                q: qkv, ldq: qkvDim, layout: layout,
                keys: state.keys[l], values: state.values[l], cacheCapacity: state.capacity,
                heads: s.heads, kvHeads: s.heads, headDim: s.headDim, scale: s.attentionScale, window: layer.window,
                scratch: scores, out: attn, ldo: d)
            DecoderKernels.linear(attn, layer.attnOut.p, bias: nil, x, tokens: T, inDim: d, outDim: d, accumulate: true)
            addBias(x, layer.attnOutBias.p, rows: T, dim: d)
            DecoderKernels.layerNorm(x, layer.ln2Weight.p, layer.ln2Bias.p, xn, rows: T, dim: d, eps: s.eps)
            DecoderKernels.linear(xn, layer.fc.p, bias: layer.fcBias.p, hidden, tokens: T, inDim: d, outDim: s.inner)
            DecoderKernels.geluTanh(hidden, count: T * s.inner)
            DecoderKernels.linear(hidden, layer.proj.p, bias: nil, x, tokens: T, inDim: s.inner, outDim: d, accumulate: true)
            addBias(x, layer.projBias.p, rows: T, dim: d)
        }
        state.length = start + T
        for (i, r) in logitRows.enumerated() {
            DecoderKernels.layerNorm(x + r * d, w.finalNormWeight.p, w.finalNormBias.p, xn + i * d, rows: 1, dim: d, eps: s.eps)
        }
        var logits = [Float](repeating: 0, count: logitRows.count * s.vocabularySize)
        logits.withUnsafeMutableBufferPointer {
            DecoderKernels.linear(xn, w.head.p, bias: nil, $0.baseAddress!, tokens: logitRows.count, inDim: d, outDim: s.vocabularySize)
        }
        return logits
    }

    private static func addBias(_ x: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, rows: Int, dim: Int) {
        for r in 0..<rows {
            let row = x + r * dim
            for j in 0..<dim { row[j] += b[j] }
        }
    }
}
