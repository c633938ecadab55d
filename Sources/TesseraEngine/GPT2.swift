import Foundation
import TesseraCore
import TesseraIO

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

/// GPT-2 tensor names. Checkpoints saved from `GPT2LMHeadModel` prefix them with `transformer.`; the original
/// OpenAI-converted ones do not. Conv1D weights are stored [in, out].
public struct GPT2TensorNames: Sendable {
    public let prefix: String

    /// Picks the prefix the source uses.
    public init(source: TensorSource) {
        prefix = source.tensorInfo("transformer.wte.weight") != nil ? "transformer." : ""
    }

    func layer(_ i: Int, _ suffix: String) -> String { "\(prefix)h.\(i).\(suffix)" }

    public func expected(_ c: GPT2Config) -> [(name: String, shape: [Int])] {
        let d = c.hiddenSize
        var out: [(String, [Int])] = [("\(prefix)wte.weight", [c.vocabularySize, d]), ("\(prefix)wpe.weight", [c.maxPositions, d]),
                                      ("\(prefix)ln_f.weight", [d]), ("\(prefix)ln_f.bias", [d])]
        for i in 0..<c.layers {
            out += [(layer(i, "ln_1.weight"), [d]), (layer(i, "ln_1.bias"), [d]),
                    (layer(i, "attn.c_attn.weight"), [d, 3 * d]), (layer(i, "attn.c_attn.bias"), [3 * d]),
                    (layer(i, "attn.c_proj.weight"), [d, d]), (layer(i, "attn.c_proj.bias"), [d]),
                    (layer(i, "ln_2.weight"), [d]), (layer(i, "ln_2.bias"), [d]),
                    (layer(i, "mlp.c_fc.weight"), [d, c.innerSize]), (layer(i, "mlp.c_fc.bias"), [c.innerSize]),
                    (layer(i, "mlp.c_proj.weight"), [c.innerSize, d]), (layer(i, "mlp.c_proj.bias"), [d])]
        }
        return out
    }
}

/// GPT-2: learned positions, pre-LayerNorm blocks, GELU (tanh), attention scaled by 1/√headDim, tied head.
///
/// `final class @unchecked Sendable`: weights are immutable after `init`; per-call state lives in `DecoderState`.
public final class GPT2Model: DecoderArchitecture, @unchecked Sendable {
    public let config: GPT2Config
    private let shape: LayerNormDecoderShape
    private let weights: LayerNormDecoderWeights

    public var vocabularySize: Int { config.vocabularySize }
    public var maxSequenceLength: Int { config.maxPositions }
    public var layerCount: Int { config.layers }
    public var kvHeadCount: Int { config.heads }
    public var headDimension: Int { config.hiddenSize / config.heads }

    public init(config c: GPT2Config, source: TensorSource) throws {
        config = c
        let n = GPT2TensorNames(source: source)
        let d = c.hiddenSize
        func w(_ name: String) throws -> WeightBuffer { WeightBuffer(try weightFloats(source, name)) }
        func conv(_ name: String, _ rows: Int, _ cols: Int) throws -> WeightBuffer {
            WeightBuffer(LayerNormDecoder.transposed(try weightFloats(source, name), rows: rows, cols: cols))
        }
        var layers: [LayerNormDecoderWeights.Layer] = []
        for i in 0..<c.layers {
            layers.append(.init(
                ln1Weight: try w(n.layer(i, "ln_1.weight")), ln1Bias: try w(n.layer(i, "ln_1.bias")),
                qkv: try conv(n.layer(i, "attn.c_attn.weight"), d, 3 * d), qkvBias: try w(n.layer(i, "attn.c_attn.bias")),
                attnOut: try conv(n.layer(i, "attn.c_proj.weight"), d, d), attnOutBias: try w(n.layer(i, "attn.c_proj.bias")),
                ln2Weight: try w(n.layer(i, "ln_2.weight")), ln2Bias: try w(n.layer(i, "ln_2.bias")),
                fc: try conv(n.layer(i, "mlp.c_fc.weight"), d, c.innerSize), fcBias: try w(n.layer(i, "mlp.c_fc.bias")),
                proj: try conv(n.layer(i, "mlp.c_proj.weight"), c.innerSize, d), projBias: try w(n.layer(i, "mlp.c_proj.bias")),
                window: nil))
        }
        let embedding = try w("\(n.prefix)wte.weight")
        weights = LayerNormDecoderWeights(
            tokenEmbedding: embedding, positionEmbedding: try w("\(n.prefix)wpe.weight"), layers: layers,
            finalNormWeight: try w("\(n.prefix)ln_f.weight"), finalNormBias: try w("\(n.prefix)ln_f.bias"), head: embedding)
        shape = LayerNormDecoderShape(vocabularySize: c.vocabularySize, hidden: d, heads: c.heads, inner: c.innerSize,
                                      positions: c.maxPositions, eps: c.layerNormEps,
                                      attentionScale: 1 / Float(d / c.heads).squareRoot())
    }

    public func forward(_ tokens: [Int], state: DecoderState, logitRows: [Int], segments: [Int]?) throws -> [Float] {
        let layout = try prepare(tokens, state: state, segments: segments)
        return LayerNormDecoder.forward(tokens, state: state, layout: layout, logitRows: logitRows, shape: shape, weights: weights)
    }
}
