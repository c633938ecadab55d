import TesseraEngine

/// GPT-2 trained through LoRA modules (`transformer.h.{i}.attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`):
/// attention scaled by 1/√headDim, global causal attention in every layer. PEFT's Conv1D modules keep A [r, in] and
/// B [out, r] (only the base weight is stored transposed, which the engine undid at load).
public final class GPT2Training: LayerNormDecoderTraining {
    public let model: GPT2Model

    public init(_ model: GPT2Model) {
        self.model = model
        let c = model.config
        super.init(engineModel: model, layers: model.layers, globals: model.globals, head: model.head, vocabularySize: c.vocabularySize,
                   maxSequenceLength: model.maxSequenceLength, hidden: c.hiddenSize, heads: c.heads, inner: c.innerSize,
                   transposedWeights: true)
    }
}
