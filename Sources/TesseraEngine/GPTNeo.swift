import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// Hyper-parameters of a GPT-Neo model from its Hugging Face `config.json`.
public struct GPTNeoConfig: Sendable, Equatable {
    public var vocabularySize: Int
    public var hiddenSize: Int
    public var heads: Int
    public var innerSize: Int
    public var maxPositions: Int
    public var layerNormEps: Float
    public var windowSize: Int
    /// "global" or "local" per layer.
    public var attentionLayers: [String]
    public var layers: Int { attentionLayers.count }

    public static func fromHF(_ json: JSONValue, file: String = "config.json") throws -> GPTNeoConfig {
        func int(_ key: String) throws -> Int {
            guard let v = json[key]?.intValue else {
                throw TesseraError(.invalidCheckpoint, "\(file): '\(key)' is missing or not an integer", hint: "check the model's config.json")
            }
            return v
        }
        let activation = json["activation_function"]?.stringValue ?? "gelu_new"
        guard ["gelu_new", "gelu_pytorch_tanh"].contains(activation) else {
            throw TesseraError(.unsupported, "\(file): activation '\(activation)' is not supported for GPT-Neo", hint: "the engine implements gelu_new")
        }
        // `attention_types` [[["global","local"], repeat], ...] expands to one kind per layer (as HF does).
        var kinds: [String] = []
        if let types = json["attention_types"]?.arrayValue {
            for entry in types {
                guard let pair = entry.arrayValue, pair.count == 2, let pattern = pair[0].arrayValue?.compactMap(\.stringValue),
                      let repeats = pair[1].intValue else {
                    throw TesseraError(.invalidCheckpoint, "\(file): 'attention_types' is malformed")
                }
                for _ in 0..<repeats { kinds += pattern }
            }
        } else if let layers = json["attention_layers"]?.arrayValue {
            kinds = layers.compactMap(\.stringValue)
        }
        let layers = try int("num_layers")
        guard kinds.count == layers, kinds.allSatisfy({ $0 == "global" || $0 == "local" }) else {
            throw TesseraError(.invalidCheckpoint, "\(file): attention layer kinds \(kinds) do not match num_layers \(layers)")
        }
        let hidden = try int("hidden_size")
        return GPTNeoConfig(vocabularySize: try int("vocab_size"), hiddenSize: hidden, heads: try int("num_heads"),
                            innerSize: json["intermediate_size"]?.intValue ?? 4 * hidden,
                            maxPositions: try int("max_position_embeddings"),
                            layerNormEps: Float(json["layer_norm_epsilon"]?.doubleValue ?? 1e-5),
                            windowSize: json["window_size"]?.intValue ?? 256, attentionLayers: kinds)
    }
}

/// GPT-Neo tensor names, one table: each per-layer tensor's Hugging Face suffix and the shape the config implies
/// (`transformer.` prefix optional). Linear weights are stored [out, in]. GPT-Neo is read from Hugging Face
/// checkpoints only.
public struct GPTNeoTensorNames: Sendable {
    public let prefix: String

    public init(source: TensorSource) {
        prefix = source.tensorInfo("transformer.wte.weight") != nil ? "transformer." : ""
    }

    public enum LayerTensor: CaseIterable, Sendable {
        case norm1Weight, norm1Bias, queryWeight, keyWeight, valueWeight, attentionOutputWeight, attentionOutputBias
        case norm2Weight, norm2Bias, upWeight, upBias, downWeight, downBias
    }

    static let layerTable: [(tensor: LayerTensor, huggingFace: String)] = [
        (.norm1Weight, "ln_1.weight"), (.norm1Bias, "ln_1.bias"),
        (.queryWeight, "attn.attention.q_proj.weight"), (.keyWeight, "attn.attention.k_proj.weight"),
        (.valueWeight, "attn.attention.v_proj.weight"),
        (.attentionOutputWeight, "attn.attention.out_proj.weight"), (.attentionOutputBias, "attn.attention.out_proj.bias"),
        (.norm2Weight, "ln_2.weight"), (.norm2Bias, "ln_2.bias"),
        (.upWeight, "mlp.c_fc.weight"), (.upBias, "mlp.c_fc.bias"),
        (.downWeight, "mlp.c_proj.weight"), (.downBias, "mlp.c_proj.bias"),
    ]

    public func name(_ tensor: LayerTensor, layer i: Int) -> String {
        "\(prefix)h.\(i).\(Self.layerTable.first { $0.tensor == tensor }?.huggingFace ?? "")"
    }

    public static func shape(_ tensor: LayerTensor, _ c: GPTNeoConfig) -> [Int] {
        let d = c.hiddenSize
        switch tensor {
        case .norm1Weight, .norm1Bias, .norm2Weight, .norm2Bias, .attentionOutputBias, .downBias: return [d]
        case .queryWeight, .keyWeight, .valueWeight, .attentionOutputWeight: return [d, d]
        case .upWeight: return [c.innerSize, d]
        case .upBias: return [c.innerSize]
        case .downWeight: return [d, c.innerSize]
        }
    }

    public var tokenEmbedding: String { "\(prefix)wte.weight" }
    public var positionEmbedding: String { "\(prefix)wpe.weight" }
    public var finalNormWeight: String { "\(prefix)ln_f.weight" }
    public var finalNormBias: String { "\(prefix)ln_f.bias" }

    public func expected(_ c: GPTNeoConfig) -> [(name: String, shape: [Int])] {
        let d = c.hiddenSize
        var out: [(String, [Int])] = [(tokenEmbedding, [c.vocabularySize, d]), (positionEmbedding, [c.maxPositions, d]),
                                      (finalNormWeight, [d]), (finalNormBias, [d])]
        for i in 0..<c.layers {
            for tensor in LayerTensor.allCases { out.append((name(tensor, layer: i), Self.shape(tensor, c))) }
        }
        return out
    }
}

/// GPT-Neo: GPT-2-like blocks, Q/K/V without bias, attention scores NOT scaled by 1/√headDim (as in Hugging Face's
/// implementation), and alternating global / local layers where a local layer sees only the last `window_size`
/// positions.
///
/// `final class @unchecked Sendable`: weights are immutable after `init` (adapters aside, see `Projection`);
/// per-call state lives in `DecoderState`.
public final class GPTNeoModel: DecoderArchitecture, @unchecked Sendable {
    public let config: GPTNeoConfig
    private let shape: LayerNormDecoderShape
    private let weights: LayerNormDecoderWeights

    public var layers: [LayerNormDecoderLayer] { weights.layers }
    public var head: Projection { weights.head }
    public var vocabularySize: Int { config.vocabularySize }
    public var maxSequenceLength: Int { config.maxPositions }
    public var layerCount: Int { config.layers }
    public var kvHeadCount: Int { config.heads }
    public var headDimension: Int { config.hiddenSize / config.heads }

    public init(config c: GPTNeoConfig, source: TensorSource) throws {
        config = c
        let names = GPTNeoTensorNames(source: source)
        let w = CheckpointWeights(source)
        let d = c.hiddenSize, inner = c.innerSize
        var layers: [LayerNormDecoderLayer] = []
        for i in 0..<c.layers {
            func n(_ t: GPTNeoTensorNames.LayerTensor) -> String { names.name(t, layer: i) }
            layers.append(LayerNormDecoderLayer(
                norm1Weight: try w.buffer(n(.norm1Weight), count: d), norm1Bias: try w.buffer(n(.norm1Bias), count: d),
                attention: .init(
                    qkv: try w.projection("layers.\(i).attention.qkv", inputs: d,
                                          parts: [("query", n(.queryWeight), d), ("key", n(.keyWeight), d), ("value", n(.valueWeight), d)]),
                    output: try w.projection("layers.\(i).attention.output", inputs: d, parts: [("output", n(.attentionOutputWeight), d)],
                                             biases: [n(.attentionOutputBias)])),
                norm2Weight: try w.buffer(n(.norm2Weight), count: d), norm2Bias: try w.buffer(n(.norm2Bias), count: d),
                mlp: .init(
                    up: try w.projection("layers.\(i).mlp.up", inputs: d, parts: [("up", n(.upWeight), inner)], biases: [n(.upBias)]),
                    down: try w.projection("layers.\(i).mlp.down", inputs: inner, parts: [("down", n(.downWeight), d)], biases: [n(.downBias)])),
                window: c.attentionLayers[i] == "local" ? c.windowSize : nil))
        }
        let embedding = try w.buffer(names.tokenEmbedding, count: c.vocabularySize * d)
        weights = LayerNormDecoderWeights(
            tokenEmbedding: embedding, positionEmbedding: try w.buffer(names.positionEmbedding, count: c.maxPositions * d), layers: layers,
            finalNormWeight: try w.buffer(names.finalNormWeight, count: d), finalNormBias: try w.buffer(names.finalNormBias, count: d),
            head: w.projection("head", sharing: embedding, tensor: names.tokenEmbedding, rows: c.vocabularySize, inputs: d))
        shape = LayerNormDecoderShape(vocabularySize: c.vocabularySize, hidden: c.hiddenSize, heads: c.heads, inner: c.innerSize,
                                      positions: c.maxPositions, eps: c.layerNormEps, attentionScale: 1)
    }

    public func forward(_ tokens: [Int], state: DecoderState, logitRows: [Int], segments: [Int]?) throws -> [Float] {
        let layout = try prepare(tokens, state: state, segments: segments)
        return LayerNormDecoder.forward(tokens, state: state, layout: layout, logitRows: logitRows, shape: shape, weights: weights)
    }
}

extension GPTNeoModel {
    /// Embeddings, final norm and attention scale, read-only (valid while the model lives).
    public var globals: LayerNormDecoderGlobals { LayerNormDecoderGlobals(weights, shape) }
}
