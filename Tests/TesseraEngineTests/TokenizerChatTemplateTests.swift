import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// Chat templates against jinja2's renderings (as transformers' apply_chat_template renders them), made by
/// scripts/make_tokenizer_fixtures.py; SmolLM2's template is read from the GGUF.
@Suite("Chat templates")
struct TokenizerChatTemplateTests {
    typealias Support = TokenizerTestSupport

    static func fixture() throws -> JSONValue {
        try JSONParser.parse(try Support.read(Support.fixturesDirectory + "/tokenizer_chat_templates.json"))
    }

    static func messages(_ json: JSONValue) -> [ChatMessage] {
        (json.arrayValue ?? []).map {
            ChatMessage(role: $0["role"]?.stringValue ?? "", content: $0["content"]?.stringValue ?? "")
        }
    }

    @Test("SmolLM2's GGUF chat template is the one the fixture rendered, and it is ChatML")
    func ggufTemplateText() throws {
        let metadata = try TestGGUFMetadata(path: Support.smolLM2GGUF)
        let source = try #require(metadata.values["tokenizer.chat_template"]?.string)
        #expect(source == (try Self.fixture()["templates"]?["smollm2"]?.stringValue))
        let template = try ChatTemplate(jinja: source)
        #expect(template.isChatML)
        let prompt = try template.render([ChatMessage(role: "user", content: "What is the capital of France?")])
        #expect(prompt == "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    }

    @Test("renders equal jinja2's", arguments: ["smollm2", "chatml", "zephyr", "exercise", "expressions"])
    func rendersMatchJinja2(name: String) throws {
        let fixture = try Self.fixture()
        let source = try #require(fixture["templates"]?[name]?.stringValue)
        let template = try ChatTemplate(jinja: source)
        let conversations = try #require(fixture["conversations"]?.arrayValue)
        let tokenizer = try Support.reference.get()
        var checked = 0
        for item in try #require(fixture["renders"]?.arrayValue) where item["template"]?.stringValue == name {
            let conversation = try #require(item["conversation"]?.intValue)
            let messages = Self.messages(conversations[conversation])
            let generation = try #require(item["add_generation_prompt"]?.boolValue as Bool?)
            let text = try template.render(messages, addGenerationPrompt: generation,
                                           bosToken: fixture["bos_token"]?.stringValue ?? "",
                                           eosToken: fixture["eos_token"]?.stringValue ?? "")
            #expect(text == item["text"]?.stringValue, "\(name) conversation \(conversation) generation \(generation)")
            if let ids = item["ids"]?.arrayValue {
                // The bos/eos the tokenizer passes to the template are the ones the fixture used.
                let encoded = try template.encode(messages, with: tokenizer, addGenerationPrompt: generation)
                #expect(encoded == ids.compactMap(\.intValue), "\(name) conversation \(conversation) ids")
            }
            checked += 1
        }
        #expect(checked == 2 * conversations.count)
    }

    @Test("the built-in ChatML template is plain ChatML")
    func builtInChatML() throws {
        let fixture = try Self.fixture()
        #expect(ChatTemplate.chatMLSource == fixture["templates"]?["chatml"]?.stringValue)
        let prompt = try ChatTemplate.chatML().render([ChatMessage(role: "system", content: "S"),
                                                        ChatMessage(role: "user", content: "U")])
        #expect(prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    }

    @Test("templates outside the supported subset, and template errors, are reported")
    func unsupported() throws {
        // Qwen-style namespace and tool handling.
        let namespaced = "{% set ns = namespace(found=false) %}{% for m in messages %}{{ m.content }}{% endfor %}"
        #expect(throws: TesseraError.self) { try ChatTemplate(jinja: namespaced).render([]) }
        let macro = "{% macro f(x) %}{{ x }}{% endmacro %}{{ f(1) }}"
        #expect(throws: TesseraError.self) { try ChatTemplate(jinja: macro) }
        let json = "{{ messages | tojson }}"
        #expect(throws: TesseraError.self) { try ChatTemplate(jinja: json).render([]) }
        let unclosed = "{% for m in messages %}{{ m.content }}"
        #expect(throws: TesseraError.self) { try ChatTemplate(jinja: unclosed) }
        // The exercise template raises on an unknown role, as jinja2 would.
        let source = try #require(try Self.fixture()["templates"]?["exercise"]?.stringValue)
        #expect(throws: TesseraError.self) {
            try ChatTemplate(jinja: source).render([ChatMessage(role: "tool", content: "x")])
        }
    }
}
