import COpenBLAS
import Foundation
import TesseraCore
import TesseraIO

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

/// A BERT encoder (embeddings, post-LayerNorm transformer blocks) on the CPU, every matrix product through sgemm.
///
/// Weights are read by their Hugging Face names, with or without the `bert.` prefix of task models, from any
/// `TensorSource` in F32, F16 or BF16, and held as float32. Immutable after loading, so it can be shared across
/// threads; `encode` allocates its own scratch buffers.
public final class BERTModel: @unchecked Sendable {
    public let config: BERTConfig
    /// `""` or `"bert."`: the prefix the weights were found under.
    public let weightPrefix: String

    private let wordEmbeddings: [Float]       // [vocab, H]
    private let positionEmbeddings: [Float]   // [maxPositions, H]
    private let tokenTypeEmbeddings: [Float]  // [types, H]
    private let embeddingNormWeight: [Float]
    private let embeddingNormBias: [Float]
    private let layers: [Layer]

    private struct Layer {
        var qkvWeight: [Float]         // [3H, H]: query, key and value stacked so one sgemm computes all three
        var qkvBias: [Float]           // [3H]
        var attentionOutWeight: [Float]  // [H, H]
        var attentionOutBias: [Float]
        var attentionNormWeight: [Float]
        var attentionNormBias: [Float]
        var intermediateWeight: [Float]  // [I, H]
        var intermediateBias: [Float]
        var outputWeight: [Float]        // [H, I]
        var outputBias: [Float]
        var outputNormWeight: [Float]
        var outputNormBias: [Float]
    }

    /// The tensors a BERT encoder with this config needs, with their shapes (names without prefix). The pooler is
    /// not used (sentence embeddings pool the hidden states) and not required.
    public static func requiredTensors(_ c: BERTConfig) -> [(name: String, shape: [Int])] {
        let h = c.hiddenSize, i = c.intermediateSize
        var list: [(String, [Int])] = [
            ("embeddings.word_embeddings.weight", [c.vocabularySize, h]),
            ("embeddings.position_embeddings.weight", [c.maxPositions, h]),
            ("embeddings.token_type_embeddings.weight", [c.typeVocabularySize, h]),
            ("embeddings.LayerNorm.weight", [h]),
            ("embeddings.LayerNorm.bias", [h]),
        ]
        for l in 0..<c.layerCount {
            let p = "encoder.layer.\(l)."
            for proj in ["query", "key", "value"] {
                list.append((p + "attention.self.\(proj).weight", [h, h]))
                list.append((p + "attention.self.\(proj).bias", [h]))
            }
            list += [
                (p + "attention.output.dense.weight", [h, h]), (p + "attention.output.dense.bias", [h]),
                (p + "attention.output.LayerNorm.weight", [h]), (p + "attention.output.LayerNorm.bias", [h]),
                (p + "intermediate.dense.weight", [i, h]), (p + "intermediate.dense.bias", [i]),
                (p + "output.dense.weight", [h, i]), (p + "output.dense.bias", [h]),
                (p + "output.LayerNorm.weight", [h]), (p + "output.LayerNorm.bias", [h]),
            ]
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
        func load(_ name: String) throws -> [Float] { try weights.floats(prefix + name) }
        wordEmbeddings = try load("embeddings.word_embeddings.weight")
        positionEmbeddings = try load("embeddings.position_embeddings.weight")
        tokenTypeEmbeddings = try load("embeddings.token_type_embeddings.weight")
        embeddingNormWeight = try load("embeddings.LayerNorm.weight")
        embeddingNormBias = try load("embeddings.LayerNorm.bias")
        var layers: [Layer] = []
        for l in 0..<config.layerCount {
            let p = "encoder.layer.\(l)."
            let a = p + "attention.self."
            layers.append(Layer(
                qkvWeight: try load(a + "query.weight") + load(a + "key.weight") + load(a + "value.weight"),
                qkvBias: try load(a + "query.bias") + load(a + "key.bias") + load(a + "value.bias"),
                attentionOutWeight: try load(p + "attention.output.dense.weight"),
                attentionOutBias: try load(p + "attention.output.dense.bias"),
                attentionNormWeight: try load(p + "attention.output.LayerNorm.weight"),
                attentionNormBias: try load(p + "attention.output.LayerNorm.bias"),
                intermediateWeight: try load(p + "intermediate.dense.weight"),
                intermediateBias: try load(p + "intermediate.dense.bias"),
                outputWeight: try load(p + "output.dense.weight"),
                outputBias: try load(p + "output.dense.bias"),
                outputNormWeight: try load(p + "output.LayerNorm.weight"),
                outputNormBias: try load(p + "output.LayerNorm.bias")))
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
    public func encode(_ batch: [[Int]]) throws -> (states: [Float], paddedLength: Int) {
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
        let n = b * t
        var x = [Float](repeating: 0, count: n * h)
        var qkv = [Float](repeating: 0, count: n * 3 * h)
        var context = [Float](repeating: 0, count: n * h)
        var hidden = [Float](repeating: 0, count: n * inter)
        var scores = [Float](repeating: 0, count: t * t)
        let lengths = batch.map(\.count)
        let scale = 1 / Float(d).squareRoot()
        let eps = c.layerNormEpsilon

        // Embeddings: word + absolute position + token type 0, then LayerNorm. Padding rows use the pad id.
        x.withUnsafeMutableBufferPointer { xp in
            wordEmbeddings.withUnsafeBufferPointer { we in
                positionEmbeddings.withUnsafeBufferPointer { pe in
                    tokenTypeEmbeddings.withUnsafeBufferPointer { te in
                        for s in 0..<b {
                            for pos in 0..<t {
                                let id = pos < lengths[s] ? batch[s][pos] : c.padTokenID
                                let row = xp.baseAddress! + (s * t + pos) * h
                                let w = we.baseAddress! + id * h, p = pe.baseAddress! + pos * h
                                for k in 0..<h { row[k] = w[k] + p[k] + te[k] }
                            }
                        }
                    }
                }
            }
            BERTModel.layerNorm(xp.baseAddress!, rows: n, width: h, weight: embeddingNormWeight, bias: embeddingNormBias, eps: eps)
        }

        for layer in layers {
            // Q, K, V for every position of every sequence: [n, 3H] = x · Wqkvᵀ + b.
            BERTModel.linear(x, layer.qkvWeight, layer.qkvBias, into: &qkv, rows: n, inputs: h, outputs: 3 * h)

            // Scaled dot-product attention per sequence and head, over the sequence's real (unpadded) keys only.
            qkv.withUnsafeBufferPointer { qp in
                context.withUnsafeMutableBufferPointer { cp in
                    scores.withUnsafeMutableBufferPointer { sp in
                        let q0 = qp.baseAddress!, s0 = sp.baseAddress!
                        for s in 0..<b {
                            let len = lengths[s]
                            for head in 0..<heads {
                                let q = q0 + s * t * 3 * h + head * d
                                let k = q + h, v = q + 2 * h
                                // Only the real query rows are computed: a padded row never feeds a real one (keys
                                // are masked, every other operation is row-wise), so its context stays zero.
                                // scores[len × len] = scale · Q[len × d] · K[len × d]ᵀ (rows strided by 3H inside qkv)
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(len), Int32(len), Int32(d),
                                            scale, q, Int32(3 * h), k, Int32(3 * h), 0, s0, Int32(t))
                                for i in 0..<len { BERTModel.softmax(s0 + i * t, count: len) }
                                // context[len × d] = P[len × len] · V[len × d], written into this head's columns.
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(len), Int32(d), Int32(len),
                                            1, s0, Int32(t), v, Int32(3 * h), 0,
                                            cp.baseAddress! + s * t * h + head * d, Int32(h))
                            }
                        }
                    }
                }
            }

            // Attention output projection, residual, LayerNorm: x = LN(x + context · Woᵀ + bo).
            BERTModel.linear(context, layer.attentionOutWeight, layer.attentionOutBias, into: &x, rows: n, inputs: h,
                             outputs: h, accumulate: true)
            x.withUnsafeMutableBufferPointer {
                BERTModel.layerNorm($0.baseAddress!, rows: n, width: h, weight: layer.attentionNormWeight,
                                    bias: layer.attentionNormBias, eps: eps)
            }

            // Feed-forward: x = LN(x + GELU(x · W1ᵀ + b1) · W2ᵀ + b2).
            BERTModel.linear(x, layer.intermediateWeight, layer.intermediateBias, into: &hidden, rows: n, inputs: h, outputs: inter)
            hidden.withUnsafeMutableBufferPointer { BERTModel.gelu($0.baseAddress!, count: n * inter, c.activation) }
            BERTModel.linear(hidden, layer.outputWeight, layer.outputBias, into: &x, rows: n, inputs: inter, outputs: h, accumulate: true)
            x.withUnsafeMutableBufferPointer {
                BERTModel.layerNorm($0.baseAddress!, rows: n, width: h, weight: layer.outputNormWeight,
                                    bias: layer.outputNormBias, eps: eps)
            }
        }
        return (x, t)
    }

    // MARK: - Kernels

    /// out[rows × outputs] = x · Wᵀ + bias (+ out when `accumulate`, which is how residuals are added for free).
    private static func linear(_ x: [Float], _ weight: [Float], _ bias: [Float], into out: inout [Float],
                               rows: Int, inputs: Int, outputs: Int, accumulate: Bool = false) {
        out.withUnsafeMutableBufferPointer { op in
            let o = op.baseAddress!
            bias.withUnsafeBufferPointer { bp in
                for r in 0..<rows {
                    let row = o + r * outputs
                    if accumulate {
                        for j in 0..<outputs { row[j] += bp[j] }
                    } else {
                        for j in 0..<outputs { row[j] = bp[j] }
                    }
                }
            }
            x.withUnsafeBufferPointer { xp in
                weight.withUnsafeBufferPointer { wp in
                    Linalg.matmulTransposedB(xp.baseAddress!, wp.baseAddress!, o, m: rows, n: outputs, k: inputs, beta: 1)
                }
            }
        }
    }

    /// In-place softmax of `count` values (max-subtracted for stability).
    @inline(__always)
    private static func softmax(_ p: UnsafeMutablePointer<Float>, count: Int) {
        var maxValue = -Float.infinity
        for j in 0..<count where p[j] > maxValue { maxValue = p[j] }
        var sum: Float = 0
        for j in 0..<count { let e = expf(p[j] - maxValue); p[j] = e; sum += e }
        let inv = 1 / sum
        for j in 0..<count { p[j] *= inv }
    }

    /// Row-wise LayerNorm with biased variance, as torch.nn.LayerNorm.
    private static func layerNorm(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int, weight: [Float], bias: [Float], eps: Float) {
        weight.withUnsafeBufferPointer { w in
            bias.withUnsafeBufferPointer { bb in
                for r in 0..<rows {
                    let row = x + r * width
                    var mean: Float = 0
                    for k in 0..<width { mean += row[k] }
                    mean /= Float(width)
                    var variance: Float = 0
                    for k in 0..<width { let dx = row[k] - mean; variance += dx * dx }
                    variance /= Float(width)
                    let inv = 1 / (variance + eps).squareRoot()
                    for k in 0..<width { row[k] = (row[k] - mean) * inv * w[k] + bb[k] }
                }
            }
        }
    }

    /// GELU in place, split over the cores (erf dominates the non-matmul time).
    private static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int, _ activation: BERTConfig.Activation) {
        let chunks = count >= 1 << 16 ? 4 : 1
        let chunk = (count + chunks - 1) / chunks
        let base = BERTSharedFloatPointer(x)
        DispatchQueue.concurrentPerform(iterations: chunks) { ci in
            let p = base.pointer
            let lo = ci * chunk, hi = min(count, lo + chunk)
            guard lo < hi else { return }
            switch activation {
            case .geluErf:
                let invSqrt2: Float = 0.70710678118654752
                for k in lo..<hi { let v = p[k]; p[k] = 0.5 * v * (1 + erff(v * invSqrt2)) }
            case .geluTanh:
                let c: Float = 0.7978845608028654  // √(2/π)
                for k in lo..<hi { let v = p[k]; p[k] = 0.5 * v * (1 + tanhf(c * (v + 0.044715 * v * v * v))) }
            }
        }
    }
}

/// A raw pointer handed to `concurrentPerform` workers that write disjoint ranges of the same buffer.
private struct BERTSharedFloatPointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    init(_ pointer: UnsafeMutablePointer<Float>) { self.pointer = pointer }
}
