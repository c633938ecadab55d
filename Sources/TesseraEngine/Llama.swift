import Foundation
import TesseraCore
import TesseraIO

/// Hyper-parameters of a Llama-architecture model (Llama 2/3, SmolLM, TinyLlama, Mistral without sliding window).
public struct LlamaConfig: Sendable, Equatable {
    public var vocabularySize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var ropeTheta: Float
    public var maxPositions: Int
    public var tiedEmbeddings: Bool
    /// GGUF files from llama.cpp's converter rotate adjacent pairs; Hugging Face checkpoints rotate split halves.
    var ropeLayout: DecoderKernels.RoPELayout
    public var ropeRotatesAdjacentPairs: Bool { ropeLayout == .adjacentPairs }

    /// From GGUF metadata (`llama.*` keys); the vocabulary size comes from `token_embd.weight`.
    public static func fromGGUF(_ gguf: GGUFFile) throws -> LlamaConfig {
        func int(_ key: String) throws -> Int {
            guard let v = gguf["llama." + key]?.intValue else {
                throw TesseraError(.invalidCheckpoint, "\(gguf.path): metadata key 'llama.\(key)' is missing", hint: "the GGUF is not a complete llama model")
            }
            return v
        }
        let hidden = try int("embedding_length")
        let heads = try int("attention.head_count")
        let headDim = gguf["llama.attention.key_length"]?.intValue ?? hidden / max(1, heads)
        if let rotary = gguf["llama.rope.dimension_count"]?.intValue, rotary != headDim {
            throw TesseraError(.unsupported, "\(gguf.path): partial RoPE (\(rotary) of \(headDim) dimensions) is not supported by the engine")
        }
        if let scaling = gguf["llama.rope.scaling.type"]?.stringValue, scaling != "none" {
            throw TesseraError(.unsupported, "\(gguf.path): RoPE scaling '\(scaling)' is not supported by the engine")
        }
        guard let embedding = gguf.info("token_embd.weight"), embedding.shape.count == 2 else {
            throw TesseraError(.notFound, "\(gguf.path): no tensor named 'token_embd.weight'", hint: "the GGUF is not a complete llama model")
        }
        return try LlamaConfig(
            vocabularySize: embedding.shape[0], hiddenSize: hidden, intermediateSize: try int("feed_forward_length"),
            layers: try int("block_count"), heads: heads,
            kvHeads: gguf["llama.attention.head_count_kv"]?.intValue ?? heads,
            headDim: headDim,
            rmsNormEps: Float(gguf["llama.attention.layer_norm_rms_epsilon"]?.doubleValue ?? 1e-5),
            ropeTheta: Float(gguf["llama.rope.freq_base"]?.doubleValue ?? 10000),
            maxPositions: gguf["llama.context_length"]?.intValue ?? 2048,
            tiedEmbeddings: gguf.info("output.weight") == nil, ropeLayout: .adjacentPairs).validated(source: gguf.path)
    }

    /// Refuses hyper-parameters no real model has before anything is sized by them (a hostile file could otherwise
    /// overflow `heads · headDim` or make the loader enumerate billions of layers).
    func validated(source: String) throws -> LlamaConfig {
        func check(_ name: String, _ value: Int, _ limit: Int) throws {
            guard value > 0, value <= limit else {
                throw TesseraError(.invalidCheckpoint, "\(source): \(name) \(value) is out of range (1...\(limit))",
                                   hint: "the model's configuration is corrupt")
            }
        }
        try check("vocabulary size", vocabularySize, 1 << 24)
        try check("hidden size", hiddenSize, 1 << 18)
        try check("intermediate size", intermediateSize, 1 << 20)
        try check("layer count", layers, 4096)
        try check("attention head count", heads, 4096)
        try check("key/value head count", kvHeads, 4096)
        try check("head dimension", headDim, 1 << 14)
        try check("context length", maxPositions, 1 << 30)
        guard heads % kvHeads == 0 else {
            throw TesseraError(.invalidCheckpoint, "\(source): \(heads) attention heads are not a multiple of \(kvHeads) key/value heads",
                               hint: "the model's configuration is corrupt")
        }
        guard headDim % 2 == 0 else {
            throw TesseraError(.invalidCheckpoint, "\(source): head dimension \(headDim) is odd, so RoPE cannot rotate it in pairs",
                               hint: "the model's configuration is corrupt")
        }
        guard rmsNormEps.isFinite, rmsNormEps >= 0, ropeTheta.isFinite, ropeTheta > 0 else {
            throw TesseraError(.invalidCheckpoint, "\(source): rms_norm_eps \(rmsNormEps) or rope theta \(ropeTheta) is not a valid number",
                               hint: "the model's configuration is corrupt")
        }
        return self
    }

    /// From a Hugging Face `config.json` (`LlamaConfig` fields).
    public static func fromHF(_ json: JSONValue, file: String = "config.json") throws -> LlamaConfig {
        func int(_ key: String) throws -> Int {
            guard let v = json[key]?.intValue else {
                throw TesseraError(.invalidCheckpoint, "\(file): '\(key)' is missing or not an integer", hint: "check the model's config.json")
            }
            return v
        }
        if let activation = json["hidden_act"]?.stringValue, activation != "silu" {
            throw TesseraError(.unsupported, "\(file): hidden_act '\(activation)' is not supported for Llama", hint: "the engine implements SwiGLU with SiLU")
        }
        for key in ["attention_bias", "mlp_bias"] where json[key]?.boolValue == true {
            throw TesseraError(.unsupported, "\(file): \(key) is not supported for Llama", hint: "the engine implements bias-free Llama layers")
        }
        if let scaling = json["rope_scaling"], scaling != .null {
            throw TesseraError(.unsupported, "\(file): rope_scaling is not supported by the engine", hint: "use a model without RoPE scaling")
        }
        // transformers ≥ 5 writes `rope_parameters: {rope_theta, rope_type}`; older versions a top-level rope_theta.
        var theta = json["rope_theta"]?.doubleValue ?? 10000
        if let parameters = json["rope_parameters"], parameters != .null {
            if let type = parameters["rope_type"]?.stringValue, type != "default" {
                throw TesseraError(.unsupported, "\(file): rope_type '\(type)' is not supported by the engine", hint: "use a model with default RoPE")
            }
            theta = parameters["rope_theta"]?.doubleValue ?? theta
        }
        let hidden = try int("hidden_size")
        let heads = try int("num_attention_heads")
        return try LlamaConfig(
            vocabularySize: try int("vocab_size"), hiddenSize: hidden, intermediateSize: try int("intermediate_size"),
            layers: try int("num_hidden_layers"), heads: heads,
            kvHeads: json["num_key_value_heads"]?.intValue ?? heads,
            headDim: json["head_dim"]?.intValue ?? hidden / max(1, heads),
            rmsNormEps: Float(json["rms_norm_eps"]?.doubleValue ?? 1e-6),
            ropeTheta: Float(theta),
            maxPositions: json["max_position_embeddings"]?.intValue ?? 2048,
            tiedEmbeddings: json["tie_word_embeddings"]?.boolValue ?? false, ropeLayout: .splitHalves).validated(source: file)
    }

    /// The Hugging Face `config.json` for this model (used when importing a GGUF).
    public func hfConfigJSON() -> JSONValue {
        .object([
            ("architectures", .array([.string("LlamaForCausalLM")])),
            ("model_type", .string("llama")),
            ("vocab_size", .int(vocabularySize)), ("hidden_size", .int(hiddenSize)),
            ("intermediate_size", .int(intermediateSize)), ("num_hidden_layers", .int(layers)),
            ("num_attention_heads", .int(heads)), ("num_key_value_heads", .int(kvHeads)), ("head_dim", .int(headDim)),
            ("rms_norm_eps", .double(Double(rmsNormEps))), ("rope_theta", .double(Double(ropeTheta))),
            ("max_position_embeddings", .int(maxPositions)), ("tie_word_embeddings", .bool(tiedEmbeddings)),
            ("hidden_act", .string("silu")), ("torch_dtype", .string("float32")),
        ])
    }
}

/// Checkpoint tensor names of a Llama model, in GGUF or Hugging Face spelling.
public struct LlamaTensorNames: Sendable {
    public enum Convention: Sendable { case gguf, huggingFace }
    public let convention: Convention

    public var embedding: String { convention == .gguf ? "token_embd.weight" : "model.embed_tokens.weight" }
    public var finalNorm: String { convention == .gguf ? "output_norm.weight" : "model.norm.weight" }
    public var output: String { convention == .gguf ? "output.weight" : "lm_head.weight" }

    /// Per-layer names: attention norm, q, k, v, o, FFN norm, gate, up, down.
    public func layer(_ i: Int) -> [String] {
        switch convention {
        case .gguf:
            return ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
                .map { "blk.\(i).\($0).weight" }
        case .huggingFace:
            return ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
                .map { "model.layers.\(i).\($0).weight" }
        }
    }

    /// Every tensor the model needs with the shape its config implies.
    public func expected(_ c: LlamaConfig) -> [(name: String, shape: [Int])] {
        let qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim
        var out: [(String, [Int])] = [(embedding, [c.vocabularySize, c.hiddenSize]), (finalNorm, [c.hiddenSize])]
        if !c.tiedEmbeddings { out.append((output, [c.vocabularySize, c.hiddenSize])) }
        for i in 0..<c.layers {
            let n = layer(i)
            let shapes = [[c.hiddenSize], [qd, c.hiddenSize], [kvd, c.hiddenSize], [kvd, c.hiddenSize], [c.hiddenSize, qd],
                          [c.hiddenSize], [c.intermediateSize, c.hiddenSize], [c.intermediateSize, c.hiddenSize],
                          [c.hiddenSize, c.intermediateSize]]
            for (name, shape) in zip(n, shapes) { out.append((name, shape)) }
        }
        return out
    }
}

/// A Llama decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU FFN, optionally tied output head.
/// Q/K/V and gate/up projections are fused into one matrix each so a layer makes four matrix products.
///
/// `final class @unchecked Sendable`: weights are immutable after `init`; per-call state lives in `DecoderState`.
public final class LlamaModel: DecoderArchitecture, @unchecked Sendable {
    public let config: LlamaConfig
    private let embedding: WeightBuffer
    private let head: WeightBuffer
    private let finalNorm: WeightBuffer
    private let attnNorm: [WeightBuffer], qkv: [WeightBuffer], attnOut: [WeightBuffer]
    private let ffnNorm: [WeightBuffer], gateUp: [WeightBuffer], down: [WeightBuffer]
    private let ropeCos: [Float], ropeSin: [Float]
    /// The same matrices in the GGUF's own Q4_1/Q8_0 blocks, for single-token products (decoding reads every weight
    /// once per token, so its speed is the bytes read); nil where the checkpoint is not such a GGUF.
    private let blockQKV: [BlockQuantizedMatrix?], blockAttnOut: [BlockQuantizedMatrix?]
    private let blockGateUp: [BlockQuantizedMatrix?], blockDown: [BlockQuantizedMatrix?]
    private let blockHead: BlockQuantizedMatrix?

    public var vocabularySize: Int { config.vocabularySize }
    /// The config's context, capped so the RoPE tables stay small (32k positions · headDim floats).
    public var maxSequenceLength: Int { min(config.maxPositions, Self.maxTablePositions) }
    static let maxTablePositions = 32768
    public var layerCount: Int { config.layers }
    public var kvHeadCount: Int { config.kvHeads }
    public var headDimension: Int { config.headDim }

    /// Loads weights from `source` named by `names`. Call through `loadCausalLM`, which checks names and shapes first.
    public init(config c: LlamaConfig, source: TensorSource, names: LlamaTensorNames) throws {
        config = c
        embedding = WeightBuffer(try weightFloats(source, names.embedding))
        head = c.tiedEmbeddings ? embedding : WeightBuffer(try weightFloats(source, names.output))
        finalNorm = WeightBuffer(try weightFloats(source, names.finalNorm))
        var an: [WeightBuffer] = [], q: [WeightBuffer] = [], o: [WeightBuffer] = []
        var fn: [WeightBuffer] = [], gu: [WeightBuffer] = [], dn: [WeightBuffer] = []
        for i in 0..<c.layers {
            let n = names.layer(i)
            an.append(WeightBuffer(try weightFloats(source, n[0])))
            q.append(WeightBuffer(stacking: [try weightFloats(source, n[1]), try weightFloats(source, n[2]), try weightFloats(source, n[3])]))
            o.append(WeightBuffer(try weightFloats(source, n[4])))
            fn.append(WeightBuffer(try weightFloats(source, n[5])))
            gu.append(WeightBuffer(stacking: [try weightFloats(source, n[6]), try weightFloats(source, n[7])]))
            dn.append(WeightBuffer(try weightFloats(source, n[8])))
        }
        attnNorm = an; qkv = q; attnOut = o; ffnNorm = fn; gateUp = gu; down = dn
        if let gguf = source as? GGUFFile, names.convention == .gguf {
            let layers = (0..<c.layers).map { names.layer($0) }
            blockQKV = layers.map { BlockQuantizedMatrix(gguf: gguf, names: [$0[1], $0[2], $0[3]]) }
            blockAttnOut = layers.map { BlockQuantizedMatrix(gguf: gguf, names: [$0[4]]) }
            blockGateUp = layers.map { BlockQuantizedMatrix(gguf: gguf, names: [$0[6], $0[7]]) }
            blockDown = layers.map { BlockQuantizedMatrix(gguf: gguf, names: [$0[8]]) }
            blockHead = BlockQuantizedMatrix(gguf: gguf, names: [c.tiedEmbeddings ? names.embedding : names.output])
        } else {
            blockQKV = Array(repeating: nil, count: c.layers); blockAttnOut = blockQKV; blockGateUp = blockQKV; blockDown = blockQKV
            blockHead = nil
        }
        (ropeCos, ropeSin) = DecoderKernels.ropeTables(positions: min(c.maxPositions, Self.maxTablePositions), headDim: c.headDim, base: c.ropeTheta)
    }

    public func forward(_ tokens: [Int], state: DecoderState, logitRows: [Int], segments: [Int]?) throws -> [Float] {
        let layout = try prepare(tokens, state: state, segments: segments)
        let c = config
        let T = tokens.count, start = state.length
        let d = c.hiddenSize, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, qkvDim = qd + 2 * kvd
        let ffn = c.intermediateSize
        let s = state.scratch
        let x = s.buffer(0, count: T * d), xn = s.buffer(1, count: T * d)
        let qkvOut = s.buffer(2, count: T * qkvDim), attn = s.buffer(3, count: T * qd)
        let gu = s.buffer(4, count: T * 2 * ffn), hidden = s.buffer(5, count: T * ffn)
        let scores = s.buffer(6, count: DecoderKernels.attentionScratchCount(tokens: T, start: start, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim))

        for (t, token) in tokens.enumerated() {
            (x + t * d).update(from: embedding.p + token * d, count: d)
        }
        let scale = 1 / Float(c.headDim).squareRoot()
        let threads = Linalg.threads
        /// One token through the block-encoded weights when there are some, else float32 through BLAS.
        func project(_ input: UnsafePointer<Float>, _ weights: WeightBuffer, _ blocks: BlockQuantizedMatrix?,
                     _ output: UnsafeMutablePointer<Float>, tokens: Int, inDim: Int, outDim: Int, accumulate: Bool = false) {
            if tokens == 1, let blocks {
                blocks.apply(input, output, accumulate: accumulate, threads: threads)
            } else {
                DecoderKernels.linear(input, weights.p, bias: nil, output, tokens: tokens, inDim: inDim, outDim: outDim, accumulate: accumulate)
            }
        }
        ropeCos.withUnsafeBufferPointer { cosTable in
          ropeSin.withUnsafeBufferPointer { sinTable in
            layout.positions.withUnsafeBufferPointer { positions in
                for l in 0..<c.layers {
                    DecoderKernels.rmsNorm(x, attnNorm[l].p, xn, rows: T, dim: d, eps: c.rmsNormEps)
                    project(xn, qkv[l], blockQKV[l], qkvOut, tokens: T, inDim: d, outDim: qkvDim)
                    DecoderKernels.applyRoPE(qkvOut, ld: qkvDim, tokens: T, heads: c.heads, headDim: c.headDim, positions: positions.baseAddress!,
                                             cos: cosTable.baseAddress!, sin: sinTable.baseAddress!, layout: c.ropeLayout)
                    DecoderKernels.applyRoPE(qkvOut + qd, ld: qkvDim, tokens: T, heads: c.kvHeads, headDim: c.headDim, positions: positions.baseAddress!,
                                             cos: cosTable.baseAddress!, sin: sinTable.baseAddress!, layout: c.ropeLayout)
                    if c.ropeLayout == .splitHalves {
                        DecoderKernels.interleaveHalves(qkvOut, ld: qkvDim, tokens: T, heads: c.heads + c.kvHeads, headDim: c.headDim)
                    }
                    state.store(layer: l, keys: qkvOut + qd, values: qkvOut + qd + kvd, ld: qkvDim, tokens: T, start: start)
                    DecoderKernels.attention(
                        q: qkvOut, ldq: qkvDim, layout: layout,
                        keys: state.keys[l], values: state.values[l], cacheCapacity: state.capacity,
                        heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, scale: scale, window: nil,
                        scratch: scores, out: attn, ldo: qd)
                    project(attn, attnOut[l], blockAttnOut[l], x, tokens: T, inDim: qd, outDim: d, accumulate: true)
                    DecoderKernels.rmsNorm(x, ffnNorm[l].p, xn, rows: T, dim: d, eps: c.rmsNormEps)
                    project(xn, gateUp[l], blockGateUp[l], gu, tokens: T, inDim: d, outDim: 2 * ffn)
                    DecoderKernels.swiGLU(gu, hidden, tokens: T, ffn: ffn)
                    project(hidden, down[l], blockDown[l], x, tokens: T, inDim: ffn, outDim: d, accumulate: true)
                }
            }
          }
        }
        state.length = start + T

        // Final norm and output head only for the rows whose logits are wanted.
        for (i, r) in logitRows.enumerated() {
            DecoderKernels.rmsNorm(x + r * d, finalNorm.p, xn + i * d, rows: 1, dim: d, eps: c.rmsNormEps)
        }
        var logits = [Float](repeating: 0, count: logitRows.count * c.vocabularySize)
        logits.withUnsafeMutableBufferPointer {
            project(xn, head, blockHead, $0.baseAddress!, tokens: logitRows.count, inDim: d, outDim: c.vocabularySize)
        }
        return logits
    }
}
