/// A fixed ChatML prompt for the built-in generation tasks. (Arbitrary Jinja chat templates, as GGUF files and
/// tokenizer_config.json carry them, are rendered by TesseraEngine's `ChatTemplate`.)
///
/// The ChatML prompt format of SmolLM2-Instruct (and Qwen, Hermes, …), as the GGUF's `tokenizer.chat_template`
/// renders one user turn with `add_generation_prompt`:
///
///     <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n
///
/// SmolLM2's template inserts its own system turn when the conversation has none; `smolLM2DefaultSystem` is that
/// text. The special markers must be mapped to their ids by the model's tokenizer (added tokens).
public struct ChatPromptFormat: Sendable, Equatable {
    public static let smolLM2DefaultSystem = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

    /// nil: no system turn.
    public var system: String?

    public init(system: String? = ChatPromptFormat.smolLM2DefaultSystem) { self.system = system }

    public func prompt(user message: String) -> String {
        var s = ""
        if let system { s += "<|im_start|>system\n\(system)<|im_end|>\n" }
        s += "<|im_start|>user\n\(message)<|im_end|>\n<|im_start|>assistant\n"
        return s
    }
}
