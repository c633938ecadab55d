import TesseraCore
import TesseraIO

/// One turn of a conversation.
public struct ChatMessage: Sendable, Hashable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A model's chat template (tokenizer.json's `chat_template` in tokenizer_config.json, or GGUF
/// `tokenizer.chat_template`), rendered the way transformers' `apply_chat_template` renders it.
///
/// The template text is interpreted with a small Jinja2 subset (see `ChatTemplateJinja.swift`) that covers the
/// ChatML family: SmolLM2's template (ChatML with a default system message when the conversation has none), plain
/// ChatML, and templates of the same shape (loops over messages, conditions on roles and `loop.first/last`,
/// `add_generation_prompt`, `bos_token` / `eos_token`). Templates that use tools, macros, `namespace` or JSON
/// filters are rejected when loaded, naming the construct, rather than rendered wrongly.
public struct ChatTemplate: Sendable {
    /// The Jinja source.
    public let source: String
    private let nodes: [Jinja.Node]

    public init(jinja source: String) throws {
        self.source = source
        do {
            self.nodes = try Jinja.parse(source)
        } catch let failure as Jinja.Failure {
            throw TesseraError(.unsupported, "chat template: \(failure.message)",
                               hint: "Tessera renders ChatML-style Jinja templates; pass --chat-template with a simpler template or a raw prompt")
        }
    }

    /// ChatML without a default system message: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then
    /// "<|im_start|>assistant\n" when a generation prompt is asked for.
    public static let chatMLSource = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

    public static func chatML() -> ChatTemplate {
        // The source above is a constant that the tests render; it cannot fail to parse.
        try! ChatTemplate(jinja: chatMLSource)
    }

    /// True if the template writes ChatML turn markers.
    public var isChatML: Bool { source.contains("<|im_start|>") }

    /// The prompt text for `messages`. `bosToken` / `eosToken` are the values of the template variables of those
    /// names (transformers passes the tokenizer's special tokens); `variables` adds more string variables.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true, bosToken: String = "",
                       eosToken: String = "", variables: [String: String] = [:]) throws -> String {
        var globals: [String: Jinja.Value] = [
            "messages": .list(messages.map { .dict(["role": .string($0.role), "content": .string($0.content)]) }),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "bos_token": .string(bosToken),
            "eos_token": .string(eosToken),
        ]
        for (name, value) in variables { globals[name] = .string(value) }
        var context = Jinja.Context(scopes: [globals])
        var out = ""
        do {
            try Jinja.render(nodes, &context, into: &out)
        } catch let failure as Jinja.Failure {
            throw TesseraError(.invalidParameter, "chat template: \(failure.message)",
                               hint: "check the roles and order of the messages")
        }
        return out
    }

    /// The prompt's token ids, as `apply_chat_template(..., tokenize=True)` gives them: the rendered text encoded
    /// with special tokens parsed from it and no post-processor ids added (the template writes its own).
    public func encode(_ messages: [ChatMessage], with tokenizer: BPETokenizer,
                       addGenerationPrompt: Bool = true) throws -> [Int] {
        let bos = tokenizer.bosTokenID.flatMap(tokenizer.tokenString) ?? ""
        let eos = tokenizer.eosTokenID.flatMap(tokenizer.tokenString) ?? ""
        let text = try render(messages, addGenerationPrompt: addGenerationPrompt, bosToken: bos, eosToken: eos)
        return tokenizer.encode(text, addSpecialTokens: false)
    }
}
