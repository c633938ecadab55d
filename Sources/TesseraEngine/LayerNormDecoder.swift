import Foundation
import TesseraCore
import TesseraMath

/// One pre-LayerNorm block's weights (GPT-2, GPT-Neo), by role.
public struct LayerNormDecoderLayer: Sendable {
    public struct Attention: Sendable {
        /// Q, K and V fused: slices "query", "key", "value".
        public let qkv: Projection
        public let output: Projection
    }

    public struct MLP: Sendable {
        /// The first projection (c_fc), before GELU.
        public let up: Projection
        /// The second projection (c_proj), back to the hidden size.
        public let down: Projection
    }

    let norm1Weight: WeightBuffer, norm1Bias: WeightBuffer
    public let attention: Attention
    let norm2Weight: WeightBuffer, norm2Bias: WeightBuffer
    public let mlp: MLP
    /// nil: global causal attention; n: each query sees the n most recent positions (itself included).
    public let window: Int?
}

/// The pre-LayerNorm transformer block stack that GPT-2 and GPT-Neo share: learned position embeddings,
/// LN → attention (fused Q/K/V) → output projection, LN → FC → GELU → projection, final LN, tied output head.
/// The architectures differ only in names, biases, attention scaling and GPT-Neo's local attention windows, which
/// their own files set up.
struct LayerNormDecoderWeights {
    var tokenEmbedding: WeightBuffer
    var positionEmbedding: WeightBuffer
    var layers: [LayerNormDecoderLayer]
    var finalNormWeight: WeightBuffer, finalNormBias: WeightBuffer
    var head: Projection
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
    /// One block, activations row-major [T, ·]:
    ///
    ///     xn  = layerNorm1(x)                         reads x (the residual stream)
    ///     qkv = xn · Wqkvᵀ + b                         reads xn
    ///     a   = attention(q, K cache, V cache)         reads q, the cached keys and values
    ///     x  += a · Woᵀ + bo                           reads a
    ///     xn  = layerNorm2(x)                          reads x
    ///     u   = xn · Wupᵀ + b                          reads xn
    ///     h   = gelu(u)                                reads u
    ///     x  += h · Wdownᵀ + b                         reads h
    ///
    /// With `state.recorder` set, x, xn, qkv, a, u and h are handed to it as they are produced (`ActivationSite`).
    static func forward(_ tokens: [Int], state: DecoderState, layout: TokenLayout, logitRows: [Int], shape s: LayerNormDecoderShape,
                        weights w: LayerNormDecoderWeights) -> [Float] {
        let T = tokens.count, start = state.length
        let d = s.hidden, qkvDim = 3 * d
        let sc = state.scratch
        let x = sc.buffer(0, count: T * d), xn = sc.buffer(1, count: T * d)
        let qkv = sc.buffer(2, count: T * qkvDim), attn = sc.buffer(3, count: T * d)
        let hidden = sc.buffer(4, count: T * s.inner)
        let scores = sc.buffer(6, count: Attention.scratchCount(tokens: T, start: start, heads: s.heads, kvHeads: s.heads, headDim: s.headDim))
        let recorder = state.recorder
        let threads = Linalg.threads
        for (t, token) in tokens.enumerated() {
            let row = x + t * d, te = w.tokenEmbedding.p + token * d, pe = w.positionEmbedding.p + layout.positions[t] * d
            for j in 0..<d { row[j] = te[j] + pe[j] }
        }
        for (l, layer) in w.layers.enumerated() {
            recorder?.record(.attentionNormInput, layer: l, values: x, rows: T, width: d)
            VectorKernels.layerNorm(x, layer.norm1Weight.p, layer.norm1Bias.p, xn, rows: T, dim: d, eps: s.eps)
            recorder?.record(.attentionInput, layer: l, values: xn, rows: T, width: d)
            layer.attention.qkv.apply(xn, rows: T, into: qkv)
            recorder?.record(.queryKeyValue, layer: l, values: qkv, rows: T, width: qkvDim)
            state.store(layer: l, keys: qkv + d, values: qkv + 2 * d, ld: qkvDim, tokens: T, start: start)
            Attention.attend(
                q: qkv, ldq: qkvDim, layout: layout,
                keys: state.keys[l], values: state.values[l], cacheCapacity: state.capacity,
                heads: s.heads, kvHeads: s.heads, headDim: s.headDim, scale: s.attentionScale, window: layer.window, threads: threads,
                scratch: scores, out: attn, ldo: d)
            recorder?.record(.attentionOutput, layer: l, values: attn, rows: T, width: d)
            layer.attention.output.apply(attn, rows: T, into: x, accumulate: true)
            recorder?.record(.mlpNormInput, layer: l, values: x, rows: T, width: d)
            VectorKernels.layerNorm(x, layer.norm2Weight.p, layer.norm2Bias.p, xn, rows: T, dim: d, eps: s.eps)
            recorder?.record(.mlpInput, layer: l, values: xn, rows: T, width: d)
            layer.mlp.up.apply(xn, rows: T, into: hidden)
            recorder?.record(.mlpUp, layer: l, values: hidden, rows: T, width: s.inner)
            VectorKernels.gelu(hidden, count: T * s.inner, .tanh)
            recorder?.record(.mlpHidden, layer: l, values: hidden, rows: T, width: s.inner)
            layer.mlp.down.apply(hidden, rows: T, into: x, accumulate: true)
        }
        state.length = start + T
        for (i, r) in logitRows.enumerated() {
            recorder?.record(.finalNormInput, layer: nil, values: x + r * d, rows: 1, width: d)
            VectorKernels.layerNorm(x + r * d, w.finalNormWeight.p, w.finalNormBias.p, xn + i * d, rows: 1, dim: d, eps: s.eps)
        }
        recorder?.record(.headInput, layer: nil, values: xn, rows: logitRows.count, width: d)
        var logits = [Float](repeating: 0, count: logitRows.count * s.vocabularySize)
        logits.withUnsafeMutableBufferPointer {
            if let base = $0.baseAddress { w.head.apply(xn, rows: logitRows.count, into: base) }
        }
        return logits
    }
}

// Read-only views of the frozen weights a backward pass reads (TesseraTraining), valid while the model lives.
extension LayerNormDecoderLayer {
    public var norm1Weights: UnsafePointer<Float> { norm1Weight.p }
    public var norm1Biases: UnsafePointer<Float> { norm1Bias.p }
    public var norm2Weights: UnsafePointer<Float> { norm2Weight.p }
    public var norm2Biases: UnsafePointer<Float> { norm2Bias.p }
}

/// The frozen weights of a GPT-2 or GPT-Neo model outside its layers, read-only (TesseraTraining's backward pass).
public struct LayerNormDecoderGlobals {
    /// [vocabulary, hidden], also the tied output head.
    public let tokenEmbedding: UnsafePointer<Float>
    /// [positions, hidden].
    public let positionEmbedding: UnsafePointer<Float>
    public let finalNormWeight: UnsafePointer<Float>
    public let finalNormBias: UnsafePointer<Float>
    public let layerNormEps: Float
    /// 1/√headDim (GPT-2) or 1 (GPT-Neo).
    public let attentionScale: Float

    init(_ w: LayerNormDecoderWeights, _ s: LayerNormDecoderShape) {
        tokenEmbedding = w.tokenEmbedding.p
        positionEmbedding = w.positionEmbedding.p
        finalNormWeight = w.finalNormWeight.p
        finalNormBias = w.finalNormBias.p
        layerNormEps = s.eps
        attentionScale = s.attentionScale
    }
}
