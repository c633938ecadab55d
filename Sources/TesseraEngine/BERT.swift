import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// The hyper-parameters of a BERT encoder, as Hugging Face's `config.json` (BertConfig) states them.
public struct BERTConfig: Sendable, Equatable {
    public enum Activation: String, Sendable {
        /// 0.5·x·(1 + erf(x/√2)), BERT's "gelu".
        case geluErf = "gelu"
        /// The tanh approximation ("gelu_new", "gelu_pytorch_tanh").
        case geluTanh = "gelu_new"
    }

    public var hiddenSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var intermediateSize: Int
    public var vocabularySize: Int
    public var maxPositions: Int
    public var typeVocabularySize: Int
    public var layerNormEpsilon: Float
    public var activation: Activation
    public var padTokenID: Int

    public var headDimension: Int { hiddenSize / headCount }

    public init(hiddenSize: Int, layerCount: Int, headCount: Int, intermediateSize: Int, vocabularySize: Int,
                maxPositions: Int = 512, typeVocabularySize: Int = 2, layerNormEpsilon: Float = 1e-12,
                activation: Activation = .geluErf, padTokenID: Int = 0) throws {
        self.hiddenSize = hiddenSize
        self.layerCount = layerCount
        self.headCount = headCount
        self.intermediateSize = intermediateSize
        self.vocabularySize = vocabularySize
        self.maxPositions = maxPositions
        self.typeVocabularySize = typeVocabularySize
        self.layerNormEpsilon = layerNormEpsilon
        self.activation = activation
        self.padTokenID = padTokenID
        guard hiddenSize > 0, layerCount > 0, headCount > 0, hiddenSize % headCount == 0, intermediateSize > 0,
              vocabularySize > 0, maxPositions > 0, typeVocabularySize > 0 else {
            throw TesseraError(.invalidParameter,
                               "BERT config: hidden size \(hiddenSize) with \(headCount) heads, \(layerCount) layers, FFN \(intermediateSize) is not a valid shape",
                               hint: "hidden_size must be a positive multiple of num_attention_heads")
        }
    }

    /// Reads `config.json` (`model_type` "bert" and relatives with the same layout).
    public init(configJSON path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TesseraError(.io, "\(path): cannot read the model config", hint: "a BERT model directory holds config.json")
        }
        let json: JSONValue
        do { json = try JSONParser.parse(data) } catch {
            throw TesseraError(.invalidParameter, "\(path): not valid JSON", underlying: error)
        }
        func int(_ key: String, _ fallback: Int? = nil) throws -> Int {
            if let v = json[key]?.intValue { return v }
            if let fallback { return fallback }
            throw TesseraError(.invalidParameter, "\(path): missing integer '\(key)'", hint: "is this a BERT config.json?")
        }
        let act = json["hidden_act"]?.stringValue ?? "gelu"
        let activation: Activation
        switch act {
        case "gelu": activation = .geluErf
        case "gelu_new", "gelu_pytorch_tanh": activation = .geluTanh
        default:
            throw TesseraError(.unsupported, "\(path): hidden_act '\(act)' is not supported", hint: "supported: gelu, gelu_new, gelu_pytorch_tanh")
        }
        if let pe = json["position_embedding_type"]?.stringValue, pe != "absolute" {
            throw TesseraError(.unsupported, "\(path): position_embedding_type '\(pe)' is not supported", hint: "only absolute positions are implemented")
        }
        try self.init(
            hiddenSize: int("hidden_size"), layerCount: int("num_hidden_layers"), headCount: int("num_attention_heads"),
            intermediateSize: int("intermediate_size"), vocabularySize: int("vocab_size"),
            maxPositions: int("max_position_embeddings", 512), typeVocabularySize: int("type_vocab_size", 2),
            layerNormEpsilon: Float(json["layer_norm_eps"]?.doubleValue ?? 1e-12), activation: activation,
            padTokenID: int("pad_token_id", 0))
    }
}

/// One BERT encoder layer's weights, by role (post-LayerNorm block).
public struct BERTLayer: Sendable {
    public struct Attention: Sendable {
        /// Query, key and value fused: slices "query", "key", "value".
        public let qkv: Projection
        /// attention.output.dense
        public let output: Projection
    }

    public struct MLP: Sendable {
        /// intermediate.dense, before GELU.
        public let up: Projection
        /// output.dense, back to the hidden size.
        public let down: Projection
    }

    public let attention: Attention
    let attentionNormWeight: WeightBuffer, attentionNormBias: WeightBuffer
    public let mlp: MLP
    let outputNormWeight: WeightBuffer, outputNormBias: WeightBuffer
}

/// A BERT encoder (embeddings, post-LayerNorm transformer blocks) on the CPU, every matrix product through sgemm.
///
/// Weights are read by their Hugging Face names, with or without the `bert.` prefix of task models, from any
/// `TensorSource` in F32, F16 or BF16, and held as float32. Immutable after loading (adapters aside, see
/// `Projection`), so it can be shared across threads; `encode` allocates its own scratch buffers.
public final class BERTModel: @unchecked Sendable {
    public let config: BERTConfig
    /// `""` or `"bert."`: the prefix the weights were found under.
    public let weightPrefix: String
    public let layers: [BERTLayer]

    private let wordEmbeddings: [Float]       // [vocab, H]
    private let positionEmbeddings: [Float]   // [maxPositions, H]
    private let tokenTypeEmbeddings: [Float]  // [types, H]
    private let embeddingNormWeight: [Float]
    private let embeddingNormBias: [Float]

    /// The tensors of one encoder layer.
    public enum LayerTensor: CaseIterable, Sendable {
        case queryWeight, queryBias, keyWeight, keyBias, valueWeight, valueBias
        case attentionOutputWeight, attentionOutputBias, attentionNormWeight, attentionNormBias
        case upWeight, upBias, downWeight, downBias, outputNormWeight, outputNormBias
    }

    /// The name table: each per-layer tensor's Hugging Face suffix (after `encoder.layer.{i}.`). BERT is read from
    /// Hugging Face checkpoints only.
    static let layerTable: [(tensor: LayerTensor, huggingFace: String)] = [
        (.queryWeight, "attention.self.query.weight"), (.queryBias, "attention.self.query.bias"),
        (.keyWeight, "attention.self.key.weight"), (.keyBias, "attention.self.key.bias"),
        (.valueWeight, "attention.self.value.weight"), (.valueBias, "attention.self.value.bias"),
        (.attentionOutputWeight, "attention.output.dense.weight"), (.attentionOutputBias, "attention.output.dense.bias"),
        (.attentionNormWeight, "attention.output.LayerNorm.weight"), (.attentionNormBias, "attention.output.LayerNorm.bias"),
        (.upWeight, "intermediate.dense.weight"), (.upBias, "intermediate.dense.bias"),
        (.downWeight, "output.dense.weight"), (.downBias, "output.dense.bias"),
        (.outputNormWeight, "output.LayerNorm.weight"), (.outputNormBias, "output.LayerNorm.bias"),
    ]

    /// The name of `tensor` in layer `l`, without prefix.
    public static func name(_ tensor: LayerTensor, layer l: Int) -> String {
        "encoder.layer.\(l).\(layerTable.first { $0.tensor == tensor }?.huggingFace ?? "")"
    }

    static func shape(_ tensor: LayerTensor, _ c: BERTConfig) -> [Int] {
        let h = c.hiddenSize, i = c.intermediateSize
        switch tensor {
        case .queryWeight, .keyWeight, .valueWeight, .attentionOutputWeight: return [h, h]
        case .upWeight: return [i, h]
        case .upBias: return [i]
        case .downWeight: return [h, i]
        default: return [h]
        }
    }

    /// The tensors a BERT encoder with this config needs, with their shapes (names without prefix). The pooler is
    /// not used (sentence embeddings pool the hidden states) and not required.
    public static func requiredTensors(_ c: BERTConfig) -> [(name: String, shape: [Int])] {
        let h = c.hiddenSize
        var list: [(String, [Int])] = [
            ("embeddings.word_embeddings.weight", [c.vocabularySize, h]),
            ("embeddings.position_embeddings.weight", [c.maxPositions, h]),
            ("embeddings.token_type_embeddings.weight", [c.typeVocabularySize, h]),
            ("embeddings.LayerNorm.weight", [h]),
            ("embeddings.LayerNorm.bias", [h]),
        ]
        for l in 0..<c.layerCount {
            for tensor in LayerTensor.allCases { list.append((name(tensor, layer: l), shape(tensor, c))) }
        }
        return list
    }

    /// Checks that every tensor exists with the config's shape and a float dtype, then loads them.
    public init(config: BERTConfig, weights: TensorSource) throws {
        self.config = config
        let probe = "embeddings.word_embeddings.weight"
        if weights.tensorInfo(probe) != nil {
            weightPrefix = ""
        } else if weights.tensorInfo("bert." + probe) != nil {
            weightPrefix = "bert."
        } else {
            throw TesseraError(.invalidCheckpoint, "\(weights.sourceName): no tensor '\(probe)' (nor 'bert.\(probe)')",
                               hint: "this does not look like a BERT checkpoint in Hugging Face naming")
        }
        let prefix = weightPrefix
        for (name, shape) in BERTModel.requiredTensors(config) {
            guard let info = weights.tensorInfo(prefix + name) else {
                throw TesseraError(.invalidCheckpoint, "\(weights.sourceName): missing tensor '\(prefix + name)' (expected shape \(shape))",
                                   hint: "the checkpoint does not match config.json (\(config.layerCount) layers)")
            }
            guard info.shape == shape else {
                throw TesseraError(.shapeMismatch, "\(weights.sourceName): tensor '\(prefix + name)' has shape \(info.shape), config.json implies \(shape)",
                                   hint: "check that config.json belongs to this checkpoint")
            }
            guard info.dtype == .f32 || info.dtype == .f16 || info.dtype == .bf16 else {
                throw TesseraError(.unsupported, "\(weights.sourceName): tensor '\(prefix + name)' is \(info.dtype.rawValue)",
                                   hint: "the BERT encoder reads F32, F16 or BF16 weights")
            }
        }
        let w = CheckpointWeights(weights)
        func load(_ name: String) throws -> [Float] { try w.floats(prefix + name) }
        wordEmbeddings = try load("embeddings.word_embeddings.weight")
        positionEmbeddings = try load("embeddings.position_embeddings.weight")
        tokenTypeEmbeddings = try load("embeddings.token_type_embeddings.weight")
        embeddingNormWeight = try load("embeddings.LayerNorm.weight")
        embeddingNormBias = try load("embeddings.LayerNorm.bias")
        let h = config.hiddenSize, inter = config.intermediateSize
        var layers: [BERTLayer] = []
        for l in 0..<config.layerCount {
            func n(_ t: LayerTensor) -> String { prefix + BERTModel.name(t, layer: l) }
            layers.append(BERTLayer(
                attention: .init(
                    qkv: try w.projection("layers.\(l).attention.qkv", inputs: h,
                                          parts: [("query", n(.queryWeight), h), ("key", n(.keyWeight), h), ("value", n(.valueWeight), h)],
                                          biases: [n(.queryBias), n(.keyBias), n(.valueBias)]),
                    output: try w.projection("layers.\(l).attention.output", inputs: h, parts: [("output", n(.attentionOutputWeight), h)],
                                             biases: [n(.attentionOutputBias)])),
                attentionNormWeight: try w.buffer(n(.attentionNormWeight), count: h),
                attentionNormBias: try w.buffer(n(.attentionNormBias), count: h),
                mlp: .init(
                    up: try w.projection("layers.\(l).mlp.up", inputs: h, parts: [("up", n(.upWeight), inter)], biases: [n(.upBias)]),
                    down: try w.projection("layers.\(l).mlp.down", inputs: inter, parts: [("down", n(.downWeight), h)], biases: [n(.downBias)])),
                outputNormWeight: try w.buffer(n(.outputNormWeight), count: h),
                outputNormBias: try w.buffer(n(.outputNormBias), count: h)))
        }
        self.layers = layers
    }

    /// Loads `config.json` and `model.safetensors` from a Hugging Face model directory.
    public static func load(directory: String) throws -> BERTModel {
        let config = try BERTConfig(configJSON: directory + "/config.json")
        let weights = try SafetensorsFile(path: directory + "/model.safetensors")
        return try BERTModel(config: config, weights: weights)
    }

    /// Hidden states of the last layer for a batch of token-id sequences of any lengths. Sequences are padded to the
    /// longest one; padded key positions are masked out of attention, so each sequence's states equal what it
    /// would get alone. Returns `[batch, paddedLength, hidden]` row-major and `paddedLength`.
    ///
    /// One layer, rows = every position of every sequence:
    ///
    ///     qkv = x · Wqkvᵀ + b                            reads x (the layer input)
    ///     a   = attention(q, k, v) per sequence          reads qkv (probabilities recomputable)
    ///     x   = LN(x + a · Woᵀ + bo)                      reads a; LN reads its input
    ///     u   = x · Wupᵀ + b                             reads x
    ///     h   = gelu(u)                                  reads u
    ///     x   = LN(x + h · Wdownᵀ + b)                    reads h; LN reads its input
    ///
    /// `recorder`, when given, receives those activations as they are produced (`ActivationSite`: the layer input is
    /// `attentionNormInput`, the attention LayerNorm's input `mlpNormInput`, the output LayerNorm's `finalNormInput`).
    public func encode(_ batch: [[Int]], recorder: (any ActivationRecorder)? = nil) throws -> (states: [Float], paddedLength: Int) {
        let c = config
        let h = c.hiddenSize, inter = c.intermediateSize, heads = c.headCount, d = c.headDimension
        let b = batch.count
        let t = batch.map(\.count).max() ?? 0
        guard b > 0, t > 0 else { return ([], t) }
        guard t <= c.maxPositions else {
            throw TesseraError(.invalidParameter, "a sequence of \(t) tokens exceeds BERT's \(c.maxPositions) positions",
                               hint: "truncate the input (the WordPiece tokenizer's maxLength)")
        }
        for seq in batch {
            for id in seq where id < 0 || id >= c.vocabularySize {
                throw TesseraError(.invalidParameter, "token id \(id) is outside BERT's vocabulary of \(c.vocabularySize)")
            }
        }
        let lengths = batch.map(\.count)
        if lengths.contains(where: { $0 < t }), c.padTokenID < 0 || c.padTokenID >= c.vocabularySize {
            throw TesseraError(.invalidCheckpoint, "BERT's pad_token_id \(c.padTokenID) is outside its vocabulary of \(c.vocabularySize), so sequences of different lengths cannot be padded",
                               hint: "fix pad_token_id in config.json, or encode sequences of equal length")
        }
        let n = b * t
        var x = [Float](repeating: 0, count: n * h)
        var qkv = [Float](repeating: 0, count: n * 3 * h)
        var context = [Float](repeating: 0, count: n * h)
        var hidden = [Float](repeating: 0, count: n * inter)
        var scores = [Float](repeating: 0, count: t * t)
        let scale = 1 / Float(d).squareRoot()
        let eps = c.layerNormEpsilon
        let gelu: VectorKernels.GELU = c.activation == .geluErf ? .erf : .tanh

        x.withUnsafeMutableBufferPointer { xb in
          qkv.withUnsafeMutableBufferPointer { qb in
            context.withUnsafeMutableBufferPointer { cb in
              hidden.withUnsafeMutableBufferPointer { hb in
                scores.withUnsafeMutableBufferPointer { sb in
                  wordEmbeddings.withUnsafeBufferPointer { we in
                    positionEmbeddings.withUnsafeBufferPointer { pe in
                      tokenTypeEmbeddings.withUnsafeBufferPointer { te in
                        embeddingNormWeight.withUnsafeBufferPointer { nw in
                          embeddingNormBias.withUnsafeBufferPointer { nb in
                guard let xp = xb.baseAddress, let q0 = qb.baseAddress, let cp = cb.baseAddress, let hp = hb.baseAddress,
                      let s0 = sb.baseAddress, let wp = we.baseAddress, let pp = pe.baseAddress, let tp = te.baseAddress,
                      let nwp = nw.baseAddress, let nbp = nb.baseAddress else { return }
                // Embeddings: word + absolute position + token type 0, then LayerNorm. Padding rows use the pad id.
                for s in 0..<b {
                    for pos in 0..<t {
                        let id = pos < lengths[s] ? batch[s][pos] : c.padTokenID
                        let row = xp + (s * t + pos) * h
                        let w = wp + id * h, p = pp + pos * h
                        for k in 0..<h { row[k] = w[k] + p[k] + tp[k] }
                    }
                }
                VectorKernels.layerNorm(xp, nwp, nbp, xp, rows: n, dim: h, eps: eps)

                for (l, layer) in layers.enumerated() {
                    recorder?.record(.attentionNormInput, layer: l, values: xp, rows: n, width: h)
                    // Q, K, V for every position of every sequence: [n, 3H] = x · Wqkvᵀ + b.
                    layer.attention.qkv.apply(xp, rows: n, into: q0)
                    recorder?.record(.queryKeyValue, layer: l, values: q0, rows: n, width: 3 * h)
                    // Scaled dot-product attention per sequence and head, over the sequence's real (unpadded) keys only.
                    for s in 0..<b {
                        let len = lengths[s]
                        for head in 0..<heads {
                            let q = q0 + s * t * 3 * h + head * d
                            let k = q + h, v = q + 2 * h
                            // Only the real query rows are computed: a padded row never feeds a real one (keys
                            // are masked, every other operation is row-wise), so its context stays zero.
                            // scores[len × len] = scale · Q[len × d] · K[len × d]ᵀ (rows strided by 3H inside qkv)
                            Linalg.sgemm(transposeB: true, m: len, n: len, k: d, alpha: scale, q, lda: 3 * h, k, ldb: 3 * h,
                                         s0, ldc: t)
                            for i in 0..<len { VectorKernels.softmaxInPlace(s0 + i * t, count: len) }
                            // context[len × d] = P[len × len] · V[len × d], written into this head's columns.
                            Linalg.sgemm(m: len, n: d, k: len, s0, lda: t, v, ldb: 3 * h, cp + s * t * h + head * d, ldc: h)
                        }
                    }
                    recorder?.record(.attentionOutput, layer: l, values: cp, rows: n, width: h)
                    // Attention output projection, residual, LayerNorm: x = LN(x + context · Woᵀ + bo).
                    layer.attention.output.apply(cp, rows: n, into: xp, accumulate: true)
                    recorder?.record(.mlpNormInput, layer: l, values: xp, rows: n, width: h)
                    VectorKernels.layerNorm(xp, layer.attentionNormWeight.p, layer.attentionNormBias.p, xp, rows: n, dim: h, eps: eps)
                    recorder?.record(.mlpInput, layer: l, values: xp, rows: n, width: h)
                    // Feed-forward: x = LN(x + GELU(x · W1ᵀ + b1) · W2ᵀ + b2).
                    layer.mlp.up.apply(xp, rows: n, into: hp)
                    recorder?.record(.mlpUp, layer: l, values: hp, rows: n, width: inter)
                    VectorKernels.gelu(hp, count: n * inter, gelu)
                    recorder?.record(.mlpHidden, layer: l, values: hp, rows: n, width: inter)
                    layer.mlp.down.apply(hp, rows: n, into: xp, accumulate: true)
                    recorder?.record(.finalNormInput, layer: l, values: xp, rows: n, width: h)
                    VectorKernels.layerNorm(xp, layer.outputNormWeight.p, layer.outputNormBias.p, xp, rows: n, dim: h, eps: eps)
                }
                          }
                        }
                      }
                    }
                  }
                }
              }
            }
          }
        }
        return (x, t)
    }
}

// Read-only views of the frozen weights a backward pass reads (TesseraTraining), valid while the model lives.
extension BERTLayer {
    public var attentionNormWeights: UnsafePointer<Float> { attentionNormWeight.p }
    public var attentionNormBiases: UnsafePointer<Float> { attentionNormBias.p }
    public var outputNormWeights: UnsafePointer<Float> { outputNormWeight.p }
    public var outputNormBiases: UnsafePointer<Float> { outputNormBias.p }
}

extension BERTModel {
    /// Word [vocabulary, H], position [positions, H] and token-type [types, H] embeddings, and the embedding
    /// LayerNorm's weight and bias [H].
    public var embeddingTables: (word: [Float], position: [Float], tokenType: [Float], normWeight: [Float], normBias: [Float]) {
        (wordEmbeddings, positionEmbeddings, tokenTypeEmbeddings, embeddingNormWeight, embeddingNormBias)
    }
}
