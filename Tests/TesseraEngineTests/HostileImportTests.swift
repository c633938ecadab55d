import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// `tessera import`: the folder appears whole or not at all, the user's files are never touched, and the side files
/// match what transformers sets up from the same GGUF (scripts/make_import_fixtures.py).
@Suite final class HostileImportTests {
    let directory: String
    init() throws { directory = try EngineFixtures.temporaryDirectory("import") }
    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func entries(_ path: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }

    @Test("the written files are listed, and only those exist")
    func writtenFiles() throws {
        let gguf = try GGUFFile(path: EngineFixtures.fixtures + "/tiny_llama.gguf")
        let target = directory + "/out"
        let written = try GGUFImport.writeHuggingFaceDirectory(from: gguf, to: target)
        #expect(written.sorted() == entries(target))
        #expect(written.contains("model.safetensors") && written.contains("generation_config.json"))
        #expect(entries(directory) == ["out"])
        // An existing empty folder is fine (and replaced by the finished one).
        let empty = directory + "/empty"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        _ = try GGUFImport.writeHuggingFaceDirectory(from: gguf, to: empty)
        #expect(entries(empty) == entries(target))
    }

    @Test("a non-empty target or a file is refused and left exactly as it was")
    func existingTargetIsNeverTouched() throws {
        let gguf = try GGUFFile(path: EngineFixtures.fixtures + "/tiny_llama.gguf")
        let target = directory + "/mine"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        try Data("my notes".utf8).write(to: URL(fileURLWithPath: target + "/config.json"))
        let e = #expect(throws: TesseraError.self) { try GGUFImport.writeHuggingFaceDirectory(from: gguf, to: target) }
        #expect(e?.message.contains("not empty") == true)
        #expect(entries(target) == ["config.json"])
        #expect(try String(contentsOfFile: target + "/config.json", encoding: .utf8) == "my notes")
        let file = directory + "/a-file"
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: TesseraError.self) { try GGUFImport.writeHuggingFaceDirectory(from: gguf, to: file) }
        #expect(entries(directory) == ["a-file", "mine"])
    }

    @Test("a failure part way leaves no folder and no temporary folder")
    func failureLeavesNothing() throws {
        // A llama GGUF without its tensors: refused, and neither the target nor a staging folder is left.
        var g = GGUFBytes.header(tensors: 0, metadata: 6)
        g.string("general.architecture"); g.u32(8); g.string("llama")
        for (key, value) in [("llama.embedding_length", 8), ("llama.attention.head_count", 2), ("llama.feed_forward_length", 16), ("llama.block_count", 1)] as [(String, UInt32)] {
            g.string(key); g.u32(4); g.u32(value)
        }
        g.string("tokenizer.ggml.tokens"); g.u32(9); g.u32(8); g.u64(1); g.string("a")
        let path = try g.write(directory, "broken.gguf")
        let target = directory + "/out"
        #expect(throws: TesseraError.self) { try GGUFImport.writeHuggingFaceDirectory(from: try GGUFFile(path: path), to: target) }
        #expect(entries(directory) == ["broken.gguf"])
    }

    @Test("tokenizer_config.json and generation_config.json match transformers' own GGUF loading of SmolLM2",
          .enabled(if: EngineFixtures.hasSmolLM2))
    func sideFilesMatchTransformers() throws {
        let golden = try EngineFixtures.json(EngineFixtures.fixtures + "/import_smollm2_transformers.json")
        let target = directory + "/smollm2"
        let written = try GGUFImport.writeHuggingFaceDirectory(from: try GGUFFile(path: EngineFixtures.smolLM2Path), to: target)
        #expect(written == ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"])
        let config = try EngineFixtures.json(target + "/tokenizer_config.json")
        let want = try #require(golden["tokenizer"])
        for key in ["bos_token", "eos_token", "pad_token", "unk_token", "chat_template"] {
            #expect(config[key] == want[key], "\(key)")
        }
        for key in ["add_bos_token", "add_eos_token"] { #expect(config[key]?.boolValue == want[key]?.boolValue, "\(key)") }
        #expect(config["model_max_length"].flatMap { if case let .number(_, text) = $0 { return text } else { return nil } }
                == want["model_max_length"]?.stringValue)
        let generation = try EngineFixtures.json(target + "/generation_config.json")
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            #expect(generation[key]?.intValue == golden["generation"]?[key]?.intValue, "\(key)")
        }
        // The engine's own renderer of the template written there gives transformers' rendering.
        let template = try ChatTemplate(jinja: try #require(config["chat_template"]?.stringValue))
        let messages = [ChatMessage(role: "user", content: "What is the capital of France?"), ChatMessage(role: "assistant", content: "Paris."),
                        ChatMessage(role: "user", content: "And of Italy?")]
        #expect(try template.render(messages, addGenerationPrompt: true) == golden["chat"]?.stringValue)
    }
}

/// Long single words tokenize to exactly Hugging Face's ids (golden ids from the `tokenizers` library, made by
/// scripts/make_import_fixtures.py), and the cost of the tokenizer stays near-linear in the input.
@Suite(.enabled(if: EngineFixtures.hasSmolLM2)) struct LongWordTokenizerTests {
    static func words() -> [String: String] {
        var state: UInt32 = 12345
        var lcg = ""
        for _ in 0..<4000 {
            state = (state &* 1103515245 &+ 12345) & 0x7FFF_FFFF
            lcg.unicodeScalars.append(Unicode.Scalar(UInt8(97 + (state >> 16) % 26)))
        }
        return ["repeated": String(repeating: "a", count: 8000), "lcg": lcg,
                "digits": String(repeating: "7", count: 2000) + String(repeating: "x", count: 2000)]
    }

    @Test("long words equal the tokenizers library's ids", arguments: ["repeated", "lcg", "digits"])
    func longWordsMatchHuggingFace(name: String) throws {
        let golden = try EngineFixtures.json(EngineFixtures.fixtures + "/import_smollm2_transformers.json")
        let want = try #require(golden["long_words"]?[name])
        let text = try #require(Self.words()[name])
        #expect(want["length"]?.intValue == text.count)
        let gguf = try GGUFFile(path: EngineFixtures.smolLM2Path)
        let tokenizer = try BPETokenizer(tokenizerJSON: Array(try GGUFImport.huggingFaceTokenizerJSON(from: gguf).serialized().utf8))
        let ids = tokenizer.encode(text, addSpecialTokens: false)
        #expect(ids == want["ids"]?.arrayValue?.compactMap(\.intValue))
        #expect(tokenizer.decode(ids) == text)
    }
}
