import Foundation
import TesseraCore
import TesseraIO

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

/// GPT-Neo tensor names (`transformer.` prefix optional). Linear weights are stored [out, in].
public struct GPTNeoTensorNames: Sendable {
    public let prefix: String

    public init(source: TensorSource) {
        prefix = source.tensorInfo("transformer.wte.weight") != nil ? "transformer." : ""
    }

    func layer(_ i: Int, _ suffix: String) -> String { "\(prefix)h.\(i).\(suffix)" }

    public func expected(_ c: GPTNeoConfig) -> [(name: String, shape: [Int])] {
        let d = c.hiddenSize
        var out: [(String, [Int])] = [("\(prefix)wte.weight", [c.vocabularySize, d]), ("\(prefix)wpe.weight", [c.maxPositions, d]),
                                      ("\(prefix)ln_f.weight", [d]), ("\(prefix)ln_f.bias", [d])]
        for i in 0..<c.layers {
            out += [(layer(i, "ln_1.weight"), [d]), (layer(i, "ln_1.bias"), [d]),
                    (layer(i, "attn.attention.q_proj.weight"), [d, d]), (layer(i, "attn.attention.k_proj.weight"), [d, d]),
                    (layer(i, "attn.attention.v_proj.weight"), [d, d]),
                    (layer(i, "attn.attention.out_proj.weight"), [d, d]), (layer(i, "attn.attention.out_proj.bias"), [d]),
                    (layer(i, "ln_2.weight"), [d]), (layer(i, "ln_2.bias"), [d]),
                    (layer(i, "mlp.c_fc.weight"), [c.innerSize, d]), (layer(i, "mlp.c_fc.bias"), [c.innerSize]),
                    (layer(i, "mlp.c_proj.weight"), [d, c.innerSize]), (layer(i, "mlp.c_proj.bias"), [d])]
        }
        return out
    }
}

/// GPT-Neo: GPT-2-like blocks, Q/K/V without bias, attention scores NOT scaled by 1/√headDim (as in Hugging Face's
/// implementation), and alternating global / local layers where a local layer sees only the last `window_size`
/// positions.
///
/// `final class @unchecked Sendable`: weights are immutable after `init`; per-call state lives in `DecoderState`.
public final class GPTNeoModel: DecoderArchitecture, @unchecked Sendable {
    public let config: GPTNeoConfig
    private let shape: LayerNormDecoderShape
    private let weights: LayerNormDecoderWeights

    public var vocabularySize: Int { config.vocabularySize }
    public var maxSequenceLength: Int { config.maxPositions }
    public var layerCount: Int { config.layers }
    public var kvHeadCount: Int { config.heads }
    public var headDimension: Int { config.hiddenSize / config.heads }

    public init(config c: GPTNeoConfig, source: TensorSource) throws {
        config = c
        let n = GPTNeoTensorNames(source: source)
        func w(_ name: String) throws -> WeightBuffer { WeightBuffer(try weightFloats(source, name)) }
        var layers: [LayerNormDecoderWeights.Layer] = []
        for i in 0..<c.layers {
            let a = "attn.attention."
            layers.append(.init(
                ln1Weight: try w(n.layer(i, "ln_1.weight")), ln1Bias: try w(n.layer(i, "ln_1.bias")),
                qkv: WeightBuffer(stacking: [try weightFloats(source, n.layer(i, a + "q_proj.weight")),
                                             try weightFloats(source, n.layer(i, a + "k_proj.weight")),
                                             try weightFloats(source, n.layer(i, a + "v_proj.weight"))]),
                qkvBias: nil,
                attnOut: try w(n.layer(i, a + "out_proj.weight")), attnOutBias: try w(n.layer(i, a + "out_proj.bias")),
                ln2Weight: try w(n.layer(i, "ln_2.weight")), ln2Bias: try w(n.layer(i, "ln_2.bias")),
                fc: try w(n.layer(i, "mlp.c_fc.weight")), fcBias: try w(n.layer(i, "mlp.c_fc.bias")),
                proj: try w(n.layer(i, "mlp.c_proj.weight")), projBias: try w(n.layer(i, "mlp.c_proj.bias")),
                window: c.attentionLayers[i] == "local" ? c.windowSize : nil))
        }
        let embedding = try w("\(n.prefix)wte.weight")
        weights = LayerNormDecoderWeights(
            tokenEmbedding: embedding, positionEmbedding: try w("\(n.prefix)wpe.weight"), layers: layers,
            finalNormWeight: try w("\(n.prefix)ln_f.weight"), finalNormBias: try w("\(n.prefix)ln_f.bias"), head: embedding)
        shape = LayerNormDecoderShape(vocabularySize: c.vocabularySize, hidden: c.hiddenSize, heads: c.heads, inner: c.innerSize,
                                      positions: c.maxPositions, eps: c.layerNormEps, attentionScale: 1)
    }

    public func forward(_ tokens: [Int], state: DecoderState, logitRows: [Int], segments: [Int]?) throws -> [Float] {
        let layout = try prepare(tokens, state: state, segments: segments)
        return LayerNormDecoder.forward(tokens, state: state, layout: layout, logitRows: logitRows, shape: shape, weights: weights)
    }
}
