import Foundation
import Testing
import TesseraTestSupport

/// The mergekit config syntax beyond `models:` (Tests/Fixtures/mergekit-configs, made by
/// scripts/make_mergekit_config_fixtures.py, which ran mergekit 0.1.5 on each config): slices (layer stacking,
/// frankenmerges with per-slice base models and parameters), gradients over models and slices, MODEL+LORA references
/// (plain and rsLoRA), tokenizer_source and chat_template, and a multi-document config. `tessera merge --config`
/// runs each unchanged, from the fixture folder, and gives mergekit's tensors to float32 rounding.
@Suite struct MergekitConfigsTests {
    static let fixtures = PackagePaths.fixtures + "/mergekit-configs"
    static let configs = ["chatml", "fallthrough", "franken", "gpt2-franken", "gradients", "linear-base", "neo-stack", "lora", "lora-rslora", "multi", "slerp-slices", "stack", "steps", "tokenizer", "tokenizer-base", "uneven"]

    static func json(_ path: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    @Test func everyConfigIsRecordedAsMergedByMergekit() throws {
        #expect(Set(Checkpoints.list(Self.fixtures + "/configs")) == Set(Self.configs.map { $0 + ".yml" }))
        let byConfig = try #require(try Self.json(Self.fixtures + "/outcomes.json")["configs"] as? [String: [String: Any]])
        for c in Self.configs {
            #expect(byConfig[c + ".yml"]?["mergekit"] as? String == "merged", "\(c)")
            // The script's run of tessera: the same tensors, and transformers gives the same logits. But for GPT-Neo:
            // mergekit has no architecture file for it and leaves its layer count (3) as it was, so transformers
            // reads 3 of the 4 stacked layers of mergekit's output; tessera's config says 4.
            let logits = byConfig[c + ".yml"]?["transformers_max_logit_diff"] as? Double ?? 1
            #expect(c == "neo-stack" ? logits > 1e-3 : logits < 1e-5, "\(c)")
        }
    }

    @Test(arguments: configs)
    func configMatchesMergekit(stem: String) throws {
        let s = try Sandbox()
        try s.run("\"$T\" merge --config configs/\(stem).yml -o \"\(s.path("out"))\"", in: Self.fixtures)
        let got = try Checkpoints.tensors(s.path("out")), expected = try Checkpoints.tensors(Self.fixtures + "/expected/\(stem).safetensors")
        #expect(Set(got.keys) == Set(expected.keys), "\(stem): the output's tensor names are mergekit's")
        for (name, e) in expected {
            let g = try #require(got[name], "\(stem): \(name)")
            #expect(g.dtype == e.dtype && g.shape == e.shape, "\(stem) \(name)")
            let x = Checkpoints.values(g), y = Checkpoints.values(e)
            let scale = max(y.map(abs).max() ?? 0, 1e-12)
            let far = zip(x, y).filter { abs($0 - $1) > 2e-6 * scale }.count
            #expect(far == 0, "\(stem) \(name): \(far) of \(y.count) values differ from mergekit's")
        }
        // config.json's layer count is mergekit's (slices change it), but for GPT-Neo, where mergekit leaves it stale.
        let config = try Self.json(s.path("out/config.json")), mergekitConfig = try Self.json(Self.fixtures + "/expected/\(stem).config.json")
        for key in ["num_hidden_layers", "n_layer", "num_layers"] where stem != "neo-stack" {
            #expect(config[key] as? Int == mergekitConfig[key] as? Int, "\(stem) \(key)")
        }
    }

    @Test func stackingRenumbersTheLayers() throws {
        let s = try Sandbox()
        try s.run("\"$T\" merge --config configs/stack.yml -o \"\(s.path("out"))\"", in: Self.fixtures)
        let got = try Checkpoints.tensors(s.path("out")), model = try Checkpoints.tensors(Self.fixtures + "/models/ft_a")
        // Output layers 0-2 are layers 0-2, output layers 3-5 are layers 1-3.
        for (out, from) in [(0, 0), (2, 2), (3, 1), (5, 3)] {
            #expect(got["model.layers.\(out).mlp.down_proj.weight"]?.bytes == model["model.layers.\(from).mlp.down_proj.weight"]?.bytes, "layer \(out)")
        }
        #expect(try Self.json(s.path("out/config.json"))["num_hidden_layers"] as? Int == 6)
        let meta = try Checkpoints.metadata(s.path("out/model.safetensors"))
        #expect(meta["tessera.merge.slices"]?.contains("\"layer_range\":[1,4]") == true)
    }

    /// GPT-Neo's per-layer attention kinds follow the stacked layers (global, local | local, global from layers 0-1
    /// then 1-2), so that transformers loads the output.
    @Test func stackingRewritesPerLayerConfigLists() throws {
        let s = try Sandbox()
        try s.run("\"$T\" merge --config configs/neo-stack.yml -o \"\(s.path("out"))\"", in: Self.fixtures)
        let config = try Self.json(s.path("out/config.json"))
        #expect(config["num_layers"] as? Int == 4)
        #expect(config["attention_layers"] as? [String] == ["global", "local", "local", "global"])
        #expect((config["attention_types"] as? [[Any]])?.first?.first as? [String] == ["global", "local", "local", "global"])
        #expect(try Self.json(Self.fixtures + "/expected/neo-stack.config.json")["num_layers"] as? Int == 3, "mergekit leaves it")
    }

    @Test func tokenizerSourceAndChatTemplateAreWritten() throws {
        let s = try Sandbox()
        try s.run("\"$T\" merge --config configs/tokenizer.yml -o \"\(s.path("out"))\"", in: Self.fixtures)
        let donor = try Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/models/ft_b/tokenizer.json"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: s.path("out/tokenizer.json"))) == donor)
        let template = try String(contentsOfFile: s.path("out/chat_template.jinja"), encoding: .utf8)
        #expect(template == (try String(contentsOfFile: Self.fixtures + "/expected/tokenizer.chat_template.jinja", encoding: .utf8)))
        // chat_template: auto takes the inputs' (most common) template.
        try s.run("\"$T\" merge --config configs/tokenizer-base.yml -o \"\(s.path("auto"))\"", in: Self.fixtures)
        let auto = try String(contentsOfFile: s.path("auto/chat_template.jinja"), encoding: .utf8)
        #expect(auto == (try String(contentsOfFile: Self.fixtures + "/expected/tokenizer-base.chat_template.jinja", encoding: .utf8)))
    }

    /// Configs tessera refuses, each in one line naming why.
    @Test func aBundledChatTemplateIsRefused() throws {
        let s = try Sandbox()
        let yaml = "models:\n  - model: models/ft_a\n  - model: models/other_vocab\nmerge_method: linear\nchat_template: alpaca\n"
        try yaml.write(toFile: s.path("c.yml"), atomically: true, encoding: .utf8)
        let r = try s.run("\"$T\" merge --config \"\(s.path("c.yml"))\" -o \"\(s.path("out"))\"", in: Self.fixtures, check: false)
        #expect(r.status != 0 && r.stderr.hasPrefix("tessera: ") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("bundled templates"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: s.path("out")))
    }

    /// Tokenizers that differ (other_vocab orders the words in reverse) are merged through the vocabulary merge:
    /// other_vocab's rows are permuted onto the output's ids (Tests/Fixtures/mergekit-vocab checks the numbers).
    @Test(arguments: ["tokenizer_source: union", "tokenizer_source: models/other_vocab"])
    func differentTokenizersAreRemapped(line: String) throws {
        let s = try Sandbox()
        let yaml = "models:\n  - model: models/ft_a\n  - model: models/other_vocab\nmerge_method: linear\nparameters: {weight: 1.0}\n\(line)\n"
        try yaml.write(toFile: s.path("c.yml"), atomically: true, encoding: .utf8)
        try s.run("\"$T\" merge --config \"\(s.path("c.yml"))\" -o \"\(s.path("out"))\"", in: Self.fixtures)
        let got = try Checkpoints.tensors(s.path("out")), a = try Checkpoints.tensors(Self.fixtures + "/models/ft_a")
        let b = try Checkpoints.tensors(Self.fixtures + "/models/other_vocab")
        // Word w3 is row 3 in ft_a and row 28 in other_vocab; the output puts it at the output tokenizer's id.
        let out = try #require(try JSONSerialization.jsonObject(with: s.bytes("out/tokenizer.json")) as? [String: Any])
        let vocab = try #require((out["model"] as? [String: Any])?["vocab"] as? [String: Int])
        let id = try #require(vocab["w3"])
        let x = Checkpoints.values(try #require(got["model.embed_tokens.weight"])), xa = Checkpoints.values(try #require(a["model.embed_tokens.weight"]))
        let xb = Checkpoints.values(try #require(b["model.embed_tokens.weight"]))
        for c in 0..<8 { #expect(abs(x[id * 8 + c] - Double(Float((Float(xa[3 * 8 + c]) + Float(xb[28 * 8 + c])) / 2))) < 1e-7) }
    }

    /// mergekit sizes the embeddings to the tokenizer's vocabulary: a model whose embeddings are padded beyond it
    /// (config.json's vocab_size 40, 32 tokens) is cut to the tokenizer's 32 rows, as mergekit cuts it.
    @Test func aTokenizerSourceResizesTheEmbeddingsToTheVocabulary() throws {
        let s = try Sandbox()
        try FileManager.default.copyItem(atPath: Self.fixtures + "/models/ft_a", toPath: s.path("padded"))
        let model = try Checkpoints.tensors(s.path("padded"))
        // Eight extra embedding and head rows past the tokenizer's 32 tokens.
        var padded = TestCheckpoint()
        for (name, t) in model.sorted(by: { $0.key < $1.key }) {
            let extra = name == "model.embed_tokens.weight" || name == "lm_head.weight"
            padded.entries.append(.init(name: name, dtype: t.dtype, shape: extra ? [40, 8] : t.shape,
                                        bytes: [UInt8](t.bytes) + (extra ? [UInt8](repeating: 0x3C, count: 8 * 8 * 4) : [])))
        }
        try FileManager.default.createDirectory(atPath: s.path("padded2"), withIntermediateDirectories: true)
        try padded.write(to: s.path("padded2/model.safetensors"))
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: s.path("padded/\(f)"), toPath: s.path("padded2/\(f)"))
        }
        let config = try String(contentsOfFile: s.path("padded2/config.json"), encoding: .utf8)
        try config.replacingOccurrences(of: "\"vocab_size\": 32", with: "\"vocab_size\": 40").write(toFile: s.path("padded2/config.json"), atomically: true, encoding: .utf8)
        try "models:\n  - model: padded2\nmerge_method: linear\ntokenizer_source: base\nbase_model: padded2\n".write(toFile: s.path("c.yml"), atomically: true, encoding: .utf8)
        try s.run("\"$T\" merge --config c.yml -o out", in: s.path(""))
        let got = try Checkpoints.tensors(s.path("out"))
        #expect(got["model.embed_tokens.weight"]?.shape == [32, 8])
        #expect(got["model.embed_tokens.weight"]?.bytes == model["model.embed_tokens.weight"]?.bytes)
        #expect(try Self.json(s.path("out/config.json"))["vocab_size"] as? Int == 32)
    }

    /// A chat template in the output (given, auto or ChatML) renders conversations as mergekit's output does
    /// (transformers applied both in the fixture script).
    @Test func chatTemplatesRenderAsMergekits() throws {
        let byConfig = try #require(try Self.json(Self.fixtures + "/outcomes.json")["configs"] as? [String: [String: Any]])
        for c in ["chatml", "tokenizer", "tokenizer-base"] {
            #expect(byConfig[c + ".yml"]?["chat_template_renders_same"] as? Bool == true, "\(c)")
        }
        let s = try Sandbox()
        try s.run("\"$T\" merge --config configs/chatml.yml -o \"\(s.path("out"))\"", in: Self.fixtures)
        #expect(try String(contentsOfFile: s.path("out/chat_template.jinja"), encoding: .utf8).contains("<|im_start|>"))
    }

    @Test func multiDocumentIntermediatesCanBeKept() throws {
        let s = try Sandbox()
        try s.run("\"$T\" merge --config configs/multi.yml --intermediate-dir \"\(s.path("inter"))\" -o \"\(s.path("out"))\"", in: Self.fixtures)
        #expect(FileManager.default.fileExists(atPath: s.path("inter/middle/model.safetensors")))
        // A second run reuses the intermediate merge (as mergekit-multi's --lazy) and gives the same output.
        try s.run("\"$T\" merge --config configs/multi.yml --intermediate-dir \"\(s.path("inter"))\" -o \"\(s.path("again"))\"", in: Self.fixtures)
        #expect(try Checkpoints.tensors(s.path("again")) == (try Checkpoints.tensors(s.path("out"))))
    }
}
