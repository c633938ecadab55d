import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraTestSupport
import TesseraTraining

/// `tessera train gates` in process on the tiny Llama (byte-level tokenizer written by the test) with the PEFT adapter
/// of Tests/Fixtures/phatgoose: the gates file it writes is read by `PhatGOOSEGates.read` and fits the expert; the
/// same command gives the same bytes; an existing output is kept unless --force; usage errors and a folder that is
/// not an adapter are refused before anything is written.
@Suite(.serialized) struct TrainGatesCommandTests {
    static let adapter = PackagePaths.fixtures + "/phatgoose/adapter"

    static func task(_ sandbox: Sandbox) throws -> String {
        let path = sandbox.path("task.jsonl")
        let rows = [#"{"tessera_task": 1, "type": "multiple_choice", "name": "colours"}"#] + (0..<6).map { i in
            #"{"context": "Item \#(i): the sky is", "choices": ["blue", "green", "red"], "answer": \#(i % 3 == 0 ? 0 : 1)}"#
        }
        try rows.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func writesAGatesFileTheReaderAccepts() throws {
        let sandbox = try Sandbox()
        let model = try sandbox.tinyLlamaFolder()
        let task = try Self.task(sandbox)
        let out = sandbox.path("gates.safetensors")
        let common = [model, "--adapter", Self.adapter, "--task", task, "--steps", "4", "--batch-size", "2", "--lr", "1e-2", "--threads", "1"]
        let run = tessera(["train", "gates"] + common + ["-o", out, "--json"])
        #expect(run.error == nil, "\(String(describing: run.error))")
        let summary = try JSONParser.parse(run.stdout)
        #expect(summary["modules"]?.intValue == 14 && summary["steps"]?.intValue == 4)
        #expect(summary["losses"]?.arrayValue?.count == 4)

        let gates = try PhatGOOSEGates.read(path: out)
        #expect(gates.steps == 4 && gates.learningRate == 1e-2 && gates.gates.count == 14)
        #expect(gates.gate("model.layers.0.self_attn.q_proj")?.count == 64 && gates.gate("model.layers.1.mlp.down_proj")?.count == 128)
        #expect(gates.gates.allSatisfy { $0.values.contains { $0 != 0 } }, "every gate moved from zero")
        #expect(gates.metadata.first { $0.0 == "expert" }?.1 == Self.adapter)
        // The file fits the expert it was trained for.
        let tensors = try SafetensorsFile(path: Self.adapter + "/adapter_model.safetensors")
        let config = Array(try Data(contentsOf: URL(fileURLWithPath: Self.adapter + "/adapter_config.json")))
        let expert = try PhatGOOSEGateTrainer.expert(try LoRAAdapter(configBytes: config, tensors: tensors, name: "a"), tensors: tensors, name: "a")
        try gates.attach(to: expert)

        // The same command gives the same bytes; an existing output is kept unless --force.
        let again = sandbox.path("again.safetensors")
        #expect(tessera(["train", "gates"] + common + ["-o", again]).error == nil)
        #expect(try sandbox.bytes("gates.safetensors") == (try sandbox.bytes("again.safetensors")))
        let before = try sandbox.bytes("gates.safetensors")
        let refused = tessera(["train", "gates"] + common + ["-o", out, "--steps", "2"])
        #expect(refused.tesseraError?.code == .conflict && refused.tesseraError?.description.contains("--force") == true)
        #expect(try sandbox.bytes("gates.safetensors") == before)
        #expect(tessera(["train", "gates"] + common + ["-o", out, "--steps", "2", "--force"]).error == nil)
        #expect(try PhatGOOSEGates.read(path: out).steps == 2)
    }

    @Test func badArgumentsAreRefusedBeforeWriting() throws {
        let sandbox = try Sandbox()
        let task = try Self.task(sandbox)
        let out = sandbox.path("g.safetensors")
        for arguments in [
            ["m", "--adapter", Self.adapter, "-o", out],                                   // no --task
            ["m", "--adapter", Self.adapter, "--task", task, "-o", out, "--steps", "0"],
            ["m", "--adapter", Self.adapter, "--task", task, "-o", out, "--warmup-ratio", "1"],
            ["m", "--adapter", Self.adapter, "--task", task, "-o", out, "--lr", "-1"],
            ["m", "--adapter", Self.adapter, "--task", task, "-o", out, "--batch-size", "2", "--micro-batch-size", "3"],
        ] {
            let run = tessera(["train", "gates"] + arguments)
            #expect(run.status == 2, "\(arguments): \(String(describing: run.error))")
        }
        // A folder that is not an adapter.
        let model = try sandbox.tinyLlamaFolder()
        let run = tessera(["train", "gates", model, "--adapter", model, "--task", task, "-o", out])
        #expect(run.tesseraError != nil && run.tesseraError?.message.contains("\n") == false)
        #expect(!FileManager.default.fileExists(atPath: out))
    }
}
