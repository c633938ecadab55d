import TesseraEngine

/// GPT-Neo trained through LoRA modules (`transformer.h.{i}.attn.attention.{q,k,v,out}_proj`, `mlp.c_fc`,
/// `mlp.c_proj`): attention scores not scaled (as Hugging Face's GPT-Neo), and local layers whose queries see only the
/// `window_size` most recent positions; both come from the engine's model (its globals and each layer's window).
public final class GPTNeoTraining: LayerNormDecoderTraining {
    public let model: GPTNeoModel

    public init(_ model: GPTNeoModel) {
        self.model = model
        let c = model.config
        super.init(engineModel: model, layers: model.layers, globals: model.globals, head: model.head, vocabularySize: c.vocabularySize,
                   maxSequenceLength: model.maxSequenceLength, hidden: c.hiddenSize, heads: c.heads, inner: c.innerSize,
                   transposedWeights: false)
    }
}
