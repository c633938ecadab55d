import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

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
    var ropeLayout: VectorKernels.RoPELayout
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

/// Checkpoint tensor names of a Llama model, in GGUF or Hugging Face spelling: one table maps each of a layer's
/// tensors to both spellings and to the shape the config implies. Loading, the tensor check before loading, and the
/// GGUF import all read it.
public struct LlamaTensorNames: Sendable {
    public enum Convention: Sendable { case gguf, huggingFace }
    public let convention: Convention

    public init(convention: Convention) { self.convention = convention }

    /// The tensors of one decoder layer.
    public enum LayerTensor: CaseIterable, Sendable {
        case attentionNorm, query, key, value, attentionOutput, mlpNorm, gate, up, down
    }

    /// (tensor, GGUF name, Hugging Face name) with `{i}` for the layer index.
    static let layerTable: [(tensor: LayerTensor, gguf: String, huggingFace: String)] = [
        (.attentionNorm, "blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
        (.query, "blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight"),
        (.key, "blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight"),
        (.value, "blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight"),
        (.attentionOutput, "blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
        (.mlpNorm, "blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
        (.gate, "blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
        (.up, "blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
        (.down, "blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ]

    public var embedding: String { convention == .gguf ? "token_embd.weight" : "model.embed_tokens.weight" }
    public var finalNorm: String { convention == .gguf ? "output_norm.weight" : "model.norm.weight" }
    public var output: String { convention == .gguf ? "output.weight" : "lm_head.weight" }

    /// The checkpoint name of `tensor` in layer `i`.
    public func name(_ tensor: LayerTensor, layer i: Int) -> String {
        guard let entry = Self.layerTable.first(where: { $0.tensor == tensor }) else { return "" }
        return (convention == .gguf ? entry.gguf : entry.huggingFace).replacingOccurrences(of: "{i}", with: String(i))
    }

    /// Per-layer names in table order: attention norm, q, k, v, o, FFN norm, gate, up, down.
    public func layer(_ i: Int) -> [String] { LayerTensor.allCases.map { name($0, layer: i) } }

    /// The shape `tensor` has under config `c`.
    public static func shape(_ tensor: LayerTensor, _ c: LlamaConfig) -> [Int] {
        let qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim
        switch tensor {
        case .attentionNorm, .mlpNorm: return [c.hiddenSize]
        case .query: return [qd, c.hiddenSize]
        case .key, .value: return [kvd, c.hiddenSize]
        case .attentionOutput: return [c.hiddenSize, qd]
        case .gate, .up: return [c.intermediateSize, c.hiddenSize]
        case .down: return [c.hiddenSize, c.intermediateSize]
        }
    }

    /// Every tensor the model needs with the shape its config implies.
    public func expected(_ c: LlamaConfig) -> [(name: String, shape: [Int])] {
        var out: [(String, [Int])] = [(embedding, [c.vocabularySize, c.hiddenSize]), (finalNorm, [c.hiddenSize])]
        if !c.tiedEmbeddings { out.append((output, [c.vocabularySize, c.hiddenSize])) }
        for i in 0..<c.layers {
            for tensor in LayerTensor.allCases { out.append((name(tensor, layer: i), Self.shape(tensor, c))) }
        }
        return out
    }
}

/// One Llama decoder layer's weights, by role.
public struct LlamaLayer: Sendable {
    public struct Attention: Sendable {
        /// Q, K and V fused: slices "query", "key", "value".
        public let qkv: Projection
        public let output: Projection
    }

    public struct MLP: Sendable {
        /// Gate and up fused: slices "gate", "up".
        public let gateUp: Projection
        public let down: Projection
    }

    let attentionNorm: WeightBuffer
    public let attention: Attention
    let mlpNorm: WeightBuffer
    public let mlp: MLP
}

/// A Llama decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU FFN, optionally tied output head.
/// Q/K/V and gate/up are fused projections, so a layer makes four matrix products.
///
/// `final class @unchecked Sendable`: weights are immutable after `init` (adapters aside, see `Projection`);
/// per-call state lives in `DecoderState`.
public final class LlamaModel: DecoderArchitecture, @unchecked Sendable {
    public let config: LlamaConfig
    public let layers: [LlamaLayer]
    /// The output head ([vocabulary, hidden]; the embedding's rows when tied).
    public let head: Projection
    private let embedding: WeightBuffer
    private let finalNorm: WeightBuffer
    private let ropeCos: [Float], ropeSin: [Float]

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
        let w = CheckpointWeights(source)
        let d = c.hiddenSize, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, ffn = c.intermediateSize
        embedding = try w.buffer(names.embedding, count: c.vocabularySize * d)
        head = c.tiedEmbeddings
            ? w.projection("head", sharing: embedding, tensor: names.embedding, rows: c.vocabularySize, inputs: d)
            : try w.projection("head", inputs: d, parts: [("logits", names.output, c.vocabularySize)])
        finalNorm = try w.buffer(names.finalNorm, count: d)
        var layers: [LlamaLayer] = []
        for i in 0..<c.layers {
            func n(_ t: LlamaTensorNames.LayerTensor) -> String { names.name(t, layer: i) }
            layers.append(LlamaLayer(
                attentionNorm: try w.buffer(n(.attentionNorm), count: d),
                attention: .init(
                    qkv: try w.projection("layers.\(i).attention.qkv", inputs: d,
                                          parts: [("query", n(.query), qd), ("key", n(.key), kvd), ("value", n(.value), kvd)]),
                    output: try w.projection("layers.\(i).attention.output", inputs: qd, parts: [("output", n(.attentionOutput), d)])),
                mlpNorm: try w.buffer(n(.mlpNorm), count: d),
                mlp: .init(
                    gateUp: try w.projection("layers.\(i).mlp.gateUp", inputs: d, parts: [("gate", n(.gate), ffn), ("up", n(.up), ffn)]),
                    down: try w.projection("layers.\(i).mlp.down", inputs: ffn, parts: [("down", n(.down), d)]))))
        }
        self.layers = layers
        (ropeCos, ropeSin) = VectorKernels.ropeTables(positions: min(c.maxPositions, Self.maxTablePositions), headDim: c.headDim, base: c.ropeTheta)
    }

    /// One layer, activations row-major [T, ·]:
    ///
    ///     xn   = rmsNorm(x) · attentionNorm          reads x (the residual stream)
    ///     qkv  = xn · Wqkvᵀ                            reads xn
    ///     q, k = rope(q, k)                            reads positions (linear in q, k)
    ///     a    = attention(q, K cache, V cache)        reads q, the cached keys and values (probabilities recomputable)
    ///     x   += a · Woᵀ                               reads a
    ///     xn   = rmsNorm(x) · mlpNorm                  reads x
    ///     gu   = xn · Wguᵀ                             reads xn
    ///     h    = silu(gate) · up                       reads gu
    ///     x   += h · Wdᵀ                               reads h
    ///
    /// With `state.recorder` set, each of x, xn, qkv (after RoPE), a, gu and h is handed to it as it is produced
    /// (`ActivationSite`): what a backward pass reads.
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
        let scores = s.buffer(6, count: Attention.scratchCount(tokens: T, start: start, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim))
        let recorder = state.recorder

        for (t, token) in tokens.enumerated() {
            (x + t * d).update(from: embedding.p + token * d, count: d)
        }
        let scale = 1 / Float(c.headDim).squareRoot()
        let threads = Linalg.threads
        ropeCos.withUnsafeBufferPointer { cosTable in
          ropeSin.withUnsafeBufferPointer { sinTable in
            layout.positions.withUnsafeBufferPointer { positions in
                guard let cosBase = cosTable.baseAddress, let sinBase = sinTable.baseAddress, let positionBase = positions.baseAddress else { return }
                for (l, layer) in layers.enumerated() {
                    recorder?.record(.attentionNormInput, layer: l, values: x, rows: T, width: d)
                    VectorKernels.rmsNorm(x, layer.attentionNorm.p, xn, rows: T, dim: d, eps: c.rmsNormEps)
                    recorder?.record(.attentionInput, layer: l, values: xn, rows: T, width: d)
                    layer.attention.qkv.apply(xn, rows: T, into: qkvOut)
                    VectorKernels.applyRoPE(qkvOut, ld: qkvDim, tokens: T, heads: c.heads, headDim: c.headDim, positions: positionBase,
                                            cos: cosBase, sin: sinBase, layout: c.ropeLayout)
                    VectorKernels.applyRoPE(qkvOut + qd, ld: qkvDim, tokens: T, heads: c.kvHeads, headDim: c.headDim, positions: positionBase,
                                            cos: cosBase, sin: sinBase, layout: c.ropeLayout)
                    if c.ropeLayout == .splitHalves {
                        VectorKernels.interleaveHalves(qkvOut, ld: qkvDim, tokens: T, heads: c.heads + c.kvHeads, headDim: c.headDim)
                    }
                    recorder?.record(.queryKeyValue, layer: l, values: qkvOut, rows: T, width: qkvDim)
                    state.store(layer: l, keys: qkvOut + qd, values: qkvOut + qd + kvd, ld: qkvDim, tokens: T, start: start)
                    Attention.attend(
                        q: qkvOut, ldq: qkvDim, layout: layout,
                        keys: state.keys[l], values: state.values[l], cacheCapacity: state.capacity,
                        heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, scale: scale, window: nil, threads: threads,
                        scratch: scores, out: attn, ldo: qd)
                    recorder?.record(.attentionOutput, layer: l, values: attn, rows: T, width: qd)
                    layer.attention.output.apply(attn, rows: T, into: x, accumulate: true)
                    recorder?.record(.mlpNormInput, layer: l, values: x, rows: T, width: d)
                    VectorKernels.rmsNorm(x, layer.mlpNorm.p, xn, rows: T, dim: d, eps: c.rmsNormEps)
                    recorder?.record(.mlpInput, layer: l, values: xn, rows: T, width: d)
                    layer.mlp.gateUp.apply(xn, rows: T, into: gu)
                    recorder?.record(.mlpUp, layer: l, values: gu, rows: T, width: 2 * ffn)
                    VectorKernels.swiGLU(gu, hidden, tokens: T, ffn: ffn)
                    recorder?.record(.mlpHidden, layer: l, values: hidden, rows: T, width: ffn)
                    layer.mlp.down.apply(hidden, rows: T, into: x, accumulate: true)
                }
            }
          }
        }
        state.length = start + T

        // Final norm and output head only for the rows whose logits are wanted.
        for (i, r) in logitRows.enumerated() {
            recorder?.record(.finalNormInput, layer: nil, values: x + r * d, rows: 1, width: d)
            VectorKernels.rmsNorm(x + r * d, finalNorm.p, xn + i * d, rows: 1, dim: d, eps: c.rmsNormEps)
        }
        recorder?.record(.headInput, layer: nil, values: xn, rows: logitRows.count, width: d)
        var logits = [Float](repeating: 0, count: logitRows.count * c.vocabularySize)
        logits.withUnsafeMutableBufferPointer {
            if let base = $0.baseAddress { head.apply(xn, rows: logitRows.count, into: base) }
        }
        return logits
    }
}

// Read-only views of the frozen weights a backward pass reads (TesseraTraining), valid while the model lives.
extension LlamaLayer {
    /// The attention RMSNorm's weights [hidden].
    public var attentionNormWeights: UnsafePointer<Float> { attentionNorm.p }
    /// The MLP RMSNorm's weights [hidden].
    public var mlpNormWeights: UnsafePointer<Float> { mlpNorm.p }
}

extension LlamaModel {
    /// The token embedding [vocabulary, hidden].
    public var embeddingWeights: UnsafePointer<Float> { embedding.p }
    /// The final RMSNorm's weights [hidden].
    public var finalNormWeights: UnsafePointer<Float> { finalNorm.p }
}
