import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// Hyper-parameters of a GPT-2 model from its Hugging Face `config.json`.
public struct GPT2Config: Sendable, Equatable {
    public var vocabularySize: Int
    public var hiddenSize: Int
    public var layers: Int
    public var heads: Int
    public var innerSize: Int
    public var maxPositions: Int
    public var layerNormEps: Float

    public static func fromHF(_ json: JSONValue, file: String = "config.json") throws -> GPT2Config {
        func int(_ key: String) throws -> Int {
            guard let v = json[key]?.intValue else {
                throw TesseraError(.invalidCheckpoint, "\(file): '\(key)' is missing or not an integer", hint: "check the model's config.json")
            }
            return v
        }
        let activation = json["activation_function"]?.stringValue ?? "gelu_new"
        guard ["gelu_new", "gelu_pytorch_tanh"].contains(activation) else {
            throw TesseraError(.unsupported, "\(file): activation '\(activation)' is not supported for GPT-2", hint: "the engine implements gelu_new")
        }
        if json["scale_attn_by_inverse_layer_idx"]?.boolValue == true || json["scale_attn_weights"]?.boolValue == false {
            throw TesseraError(.unsupported, "\(file): non-default GPT-2 attention scaling is not supported")
        }
        let hidden = try int("n_embd")
        return GPT2Config(vocabularySize: try int("vocab_size"), hiddenSize: hidden, layers: try int("n_layer"),
                          heads: try int("n_head"), innerSize: json["n_inner"]?.intValue ?? 4 * hidden,
                          maxPositions: try int("n_positions"),
                          layerNormEps: Float(json["layer_norm_epsilon"]?.doubleValue ?? 1e-5))
    }
}

/// GPT-2 tensor names, one table: each per-layer tensor's Hugging Face suffix and the shape the config implies.
/// Checkpoints saved from `GPT2LMHeadModel` prefix them with `transformer.`; the original OpenAI-converted ones do
/// not. Conv1D weights are stored [in, out] (transposed at load). GPT-2 is read from Hugging Face checkpoints only.
public struct GPT2TensorNames: Sendable {
    public let prefix: String

    /// Picks the prefix the source uses.
    public init(source: TensorSource) {
        prefix = source.tensorInfo("transformer.wte.weight") != nil ? "transformer." : ""
    }

    public enum LayerTensor: CaseIterable, Sendable {
        case norm1Weight, norm1Bias, qkvWeight, qkvBias, attentionOutputWeight, attentionOutputBias
        case norm2Weight, norm2Bias, upWeight, upBias, downWeight, downBias
    }

    static let layerTable: [(tensor: LayerTensor, huggingFace: String)] = [
        (.norm1Weight, "ln_1.weight"), (.norm1Bias, "ln_1.bias"),
        (.qkvWeight, "attn.c_attn.weight"), (.qkvBias, "attn.c_attn.bias"),
        (.attentionOutputWeight, "attn.c_proj.weight"), (.attentionOutputBias, "attn.c_proj.bias"),
        (.norm2Weight, "ln_2.weight"), (.norm2Bias, "ln_2.bias"),
        (.upWeight, "mlp.c_fc.weight"), (.upBias, "mlp.c_fc.bias"),
        (.downWeight, "mlp.c_proj.weight"), (.downBias, "mlp.c_proj.bias"),
    ]

    public func name(_ tensor: LayerTensor, layer i: Int) -> String {
        "\(prefix)h.\(i).\(Self.layerTable.first { $0.tensor == tensor }?.huggingFace ?? "")"
    }

    public static func shape(_ tensor: LayerTensor, _ c: GPT2Config) -> [Int] {
        let d = c.hiddenSize
        switch tensor {
        case .norm1Weight, .norm1Bias, .norm2Weight, .norm2Bias, .attentionOutputBias, .downBias: return [d]
        case .qkvWeight: return [d, 3 * d]
        case .qkvBias: return [3 * d]
        case .attentionOutputWeight: return [d, d]
        case .upWeight: return [d, c.innerSize]
        case .upBias: return [c.innerSize]
        case .downWeight: return [c.innerSize, d]
        }
    }

    public var tokenEmbedding: String { "\(prefix)wte.weight" }
    public var positionEmbedding: String { "\(prefix)wpe.weight" }
    public var finalNormWeight: String { "\(prefix)ln_f.weight" }
    public var finalNormBias: String { "\(prefix)ln_f.bias" }

    public func expected(_ c: GPT2Config) -> [(name: String, shape: [Int])] {
        let d = c.hiddenSize
        var out: [(String, [Int])] = [(tokenEmbedding, [c.vocabularySize, d]), (positionEmbedding, [c.maxPositions, d]),
                                      (finalNormWeight, [d]), (finalNormBias, [d])]
        for i in 0..<c.layers {
            for tensor in LayerTensor.allCases { out.append((name(tensor, layer: i), Self.shape(tensor, c))) }
        }
        return out
    }
}

/// GPT-2: learned positions, pre-LayerNorm blocks, GELU (tanh), attention scaled by 1/√headDim, tied head.
///
/// `final class @unchecked Sendable`: weights are immutable after `init` (adapters aside, see `Projection`);
/// per-call state lives in `DecoderState`.
public final class GPT2Model: DecoderArchitecture, @unchecked Sendable {
    public let config: GPT2Config
    private let shape: LayerNormDecoderShape
    private let weights: LayerNormDecoderWeights

    public var layers: [LayerNormDecoderLayer] { weights.layers }
    public var head: Projection { weights.head }
    public var vocabularySize: Int { config.vocabularySize }
    public var maxSequenceLength: Int { config.maxPositions }
    public var layerCount: Int { config.layers }
    public var kvHeadCount: Int { config.heads }
    public var headDimension: Int { config.hiddenSize / config.heads }

    public init(config c: GPT2Config, source: TensorSource) throws {
        config = c
        let names = GPT2TensorNames(source: source)
        let w = CheckpointWeights(source)
        let d = c.hiddenSize, inner = c.innerSize
        var layers: [LayerNormDecoderLayer] = []
        for i in 0..<c.layers {
            func n(_ t: GPT2TensorNames.LayerTensor) -> String { names.name(t, layer: i) }
            layers.append(LayerNormDecoderLayer(
                norm1Weight: try w.buffer(n(.norm1Weight), count: d), norm1Bias: try w.buffer(n(.norm1Bias), count: d),
                attention: .init(
                    qkv: try w.projection("layers.\(i).attention.qkv", inputs: d, parts: [("qkv", n(.qkvWeight), 3 * d)],
                                          biases: [n(.qkvBias)], transposed: true,
                                          slices: [("query", d), ("key", d), ("value", d)]),
                    output: try w.projection("layers.\(i).attention.output", inputs: d, parts: [("output", n(.attentionOutputWeight), d)],
                                             biases: [n(.attentionOutputBias)], transposed: true)),
                norm2Weight: try w.buffer(n(.norm2Weight), count: d), norm2Bias: try w.buffer(n(.norm2Bias), count: d),
                mlp: .init(
                    up: try w.projection("layers.\(i).mlp.up", inputs: d, parts: [("up", n(.upWeight), inner)],
                                         biases: [n(.upBias)], transposed: true),
                    down: try w.projection("layers.\(i).mlp.down", inputs: inner, parts: [("down", n(.downWeight), d)],
                                           biases: [n(.downBias)], transposed: true)),
                window: nil))
        }
        let embedding = try w.buffer(names.tokenEmbedding, count: c.vocabularySize * d)
        weights = LayerNormDecoderWeights(
            tokenEmbedding: embedding, positionEmbedding: try w.buffer(names.positionEmbedding, count: c.maxPositions * d), layers: layers,
            finalNormWeight: try w.buffer(names.finalNormWeight, count: d), finalNormBias: try w.buffer(names.finalNormBias, count: d),
            head: w.projection("head", sharing: embedding, tensor: names.tokenEmbedding, rows: c.vocabularySize, inputs: d))
        shape = LayerNormDecoderShape(vocabularySize: c.vocabularySize, hidden: d, heads: c.heads, inner: c.innerSize,
                                      positions: c.maxPositions, eps: c.layerNormEps,
                                      attentionScale: 1 / Float(d / c.heads).squareRoot())
    }

    public func forward(_ tokens: [Int], state: DecoderState, logitRows: [Int], segments: [Int]?) throws -> [Float] {
        let layout = try prepare(tokens, state: state, segments: segments)
        return LayerNormDecoder.forward(tokens, state: state, layout: layout, logitRows: logitRows, shape: shape, weights: weights)
    }
}

extension GPT2Model {
    /// Embeddings, final norm and attention scale, read-only (valid while the model lives).
    public var globals: LayerNormDecoderGlobals { LayerNormDecoderGlobals(weights, shape) }
}
