import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraStore
import TesseraTestSupport

/// `tessera train lora` run in process: usage errors, outputs it must not touch, hostile task files (all before any
/// model is loaded), then real runs on the tiny Llama of the engine's fixtures (a byte-level tokenizer written by the
/// test beside it): the PEFT folder and its provenance, `tessera ls` and `eval --adapter` reading it, the same bytes
/// for the same seed, a finished output kept unless --force, REV:path provenance.
@Suite(.serialized) struct TrainCommandTests {
    static func task(_ sandbox: Sandbox, _ name: String = "task.jsonl", lines: [String]? = nil) throws -> String {
        let path = sandbox.path(name)
        let rows = lines ?? ([#"{"tessera_task": 1, "type": "multiple_choice", "name": "colours"}"#] + (0..<12).map { i in
            #"{"context": "Item \#(i): the sky is", "choices": ["blue", "green", "red"], "answer": \#(i % 3 == 0 ? 0 : 1)}"#
        })
        try rows.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func train(_ arguments: [String]) -> CommandRun { tessera(["train", "lora"] + arguments) }

    // MARK: before any model is loaded

    @Test func usageErrorsAreValidationErrors() throws {
        let sandbox = try Sandbox()
        let task = try Self.task(sandbox)
        let out = sandbox.path("out")
        for arguments in [
            ["m", "-o", out, "--steps", "3"],                                        // no --task
            ["m", "--task", task, "-o", out],                                        // neither --steps nor --epochs
            ["m", "--task", task, "-o", out, "--steps", "3", "--epochs", "1"],
            ["m", "--task", task, "-o", out, "--steps", "0"],
            ["m", "--task", task, "-o", out, "--steps", "3", "--batch-size", "2", "--micro-batch-size", "3"],
            ["m", "--task", task, "-o", out, "--steps", "3", "--schedule", "exponential"],
            ["m", "--task", task, "-o", out, "--steps", "3", "--warmup", "1.5"],
            ["m", "--task", task, "-o", out, "--steps", "3", "--dropout", "1"],
            ["m", "--task", task, "-o", out, "--steps", "3", "--lr", "nan"],
            ["m", "--task", task, "-o", out, "--steps", "3", "--eval-every", "2"],   // no --eval-task
            ["m", "--task", task, "-o", out, "--steps", "3", "--targets", ","],
        ] {
            let run = Self.train(arguments)
            #expect(run.status == 2, "\(arguments): \(String(describing: run.error))")
        }
        #expect(!FileManager.default.fileExists(atPath: out))
    }

    @Test func outputsTrainingDoesNotOwnAreLeftAlone() throws {
        let sandbox = try Sandbox()
        let task = try Self.task(sandbox)
        // A folder with the user's file in it.
        let mine = sandbox.path("mine")
        try FileManager.default.createDirectory(atPath: mine, withIntermediateDirectories: true)
        try "keep me".write(toFile: mine + "/notes.txt", atomically: true, encoding: .utf8)
        var run = Self.train(["nope", "--task", task, "-o", mine, "--steps", "2"])
        #expect(run.tesseraError?.code == .conflict && run.tesseraError?.message.contains("notes.txt") == true)
        #expect(try String(contentsOfFile: mine + "/notes.txt", encoding: .utf8) == "keep me")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mine) == ["notes.txt"])
        // A file, and a link.
        try "a file".write(toFile: sandbox.path("file"), atomically: true, encoding: .utf8)
        run = Self.train(["nope", "--task", task, "-o", sandbox.path("file"), "--steps", "2"])
        #expect(run.tesseraError?.code == .conflict)
        try FileManager.default.createSymbolicLink(atPath: sandbox.path("link"), withDestinationPath: mine)
        run = Self.train(["nope", "--task", task, "-o", sandbox.path("link"), "--steps", "2"])
        #expect(run.tesseraError?.code == .conflict && run.tesseraError?.message.contains("symbolic link") == true)
        #expect(try String(contentsOfFile: sandbox.path("file"), encoding: .utf8) == "a file")
    }

    @Test func aKilledWritesTemporaryFileIsTheRunsOwn() throws {
        let sandbox = try Sandbox()
        let task = try Self.task(sandbox)
        let model = try sandbox.tinyLlamaFolder()
        // What a run killed while Foundation's atomic write was writing its checkpoint leaves behind.
        let folder = sandbox.path("out/.checkpoint")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try Data("half".utf8).write(to: URL(fileURLWithPath: folder + "/.dat.nosync97C.q5CJ1F"))
        let run = Self.train([model, "--task", task, "-o", sandbox.path("out"), "--steps", "2", "--threads", "1"])
        #expect(run.error == nil, "\(String(describing: run.error))")
        #expect(FileManager.default.fileExists(atPath: sandbox.path("out/training.json")))
        #expect(!FileManager.default.fileExists(atPath: folder))
    }

    @Test(arguments: [
        ("empty", [String](), "empty"),
        ("not-json", [#"{"tessera_task": 1, "type": "perplexity", "name": "p"}"#, #"{"text": "fine"}"#, "{oops"], ":3:"),
        ("missing", [#"{"tessera_task": 1, "type": "multiple_choice", "name": "m"}"#, #"{"context": "c", "choices": ["a", "b"]}"#], ":2:"),
    ])
    func hostileTaskFilesFailInOneLineBeforeTheModel(_ name: String, _ lines: [String], _ mentions: String) throws {
        let sandbox = try Sandbox()
        let task = try Self.task(sandbox, name + ".jsonl", lines: lines)
        // The base does not exist: the task file is read first, so its error is the one reported.
        let run = Self.train([sandbox.path("no-model"), "--task", task, "-o", sandbox.path("out"), "--steps", "2"])
        let error = try #require(run.tesseraError)
        #expect(error.message.contains(task) && error.message.contains(mentions), "\(error)")
        #expect(!error.description.contains("\n"))
        #expect(!FileManager.default.fileExists(atPath: sandbox.path("out")))
    }

    // MARK: real runs on the tiny Llama

    @Test func trainsAPEFTAdapterWithItsProvenance() throws {
        let sandbox = try Sandbox()
        let model = try sandbox.tinyLlamaFolder()
        let task = try Self.task(sandbox)
        let out = sandbox.path("out")
        let common = [model, "--task", task, "--steps", "6", "--batch-size", "4", "--micro-batch-size", "2", "--rank", "4",
                      "--lr", "1e-2", "--warmup", "0.2", "--seed", "11", "--checkpoint-every", "2", "--threads", "1"]
        let run = Self.train(common + ["-o", out, "--json"])
        #expect(run.error == nil, "\(String(describing: run.error))")
        let summary = try JSONParser.parse(run.stdout)
        #expect(summary["steps"]?.intValue == 6)
        #expect(summary["final_loss"]?.doubleValue.map { $0.isFinite && $0 > 0 } == true)

        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: out)) == ["adapter_config.json", "adapter_model.safetensors", "training.json"])
        let config = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: out + "/adapter_config.json"))))
        #expect(config["r"]?.intValue == 4 && config["lora_alpha"]?.intValue == 8 && config["peft_type"]?.stringValue == "LORA")
        #expect(config["task_type"]?.stringValue == "CAUSAL_LM" && config["base_model_name_or_path"]?.stringValue == model)
        #expect(config["target_modules"]?.arrayValue?.compactMap(\.stringValue) == ["k_proj", "o_proj", "q_proj", "v_proj"])
        let adapter = try SafetensorsTestReader(path: out + "/adapter_model.safetensors")
        #expect(adapter.names.count == 2 * 4 * 2)
        #expect(adapter.shape("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == [4, 64])
        #expect(adapter.shape("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight") == [32, 4])

        let training = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: out + "/training.json"))))
        let taskHash = SHA256Hasher.hex([UInt8](try Data(contentsOf: URL(fileURLWithPath: task))))
        #expect(training["data"]?.arrayValue?.first?["sha256"]?.stringValue == taskHash)
        #expect(training["base"]?["name"]?.stringValue == model)
        #expect(training["steps"]?.intValue == 6 && training["losses"]?.arrayValue?.count == 6)
        #expect(training["hyperparameters"]?["warmup_steps"]?.intValue == 2)
        #expect(training["hyperparameters"]?["seed"]?.stringValue == "11")
        #expect(training["tessera_version"]?.stringValue != nil && training["wall_seconds"]?.doubleValue != nil)

        // `tessera ls` shows it as an adapter; `eval --adapter` runs it.
        let ls = tessera("ls", out)
        #expect(ls.error == nil && ls.stdout.contains("PEFT LoRA adapter"), "\(ls.stdout)")
        let eval = tessera("eval", model, "--adapter", out, "--task", task, "--json")
        #expect(eval.error == nil, "\(String(describing: eval.error))")

        // The same command into another folder gives the same bytes.
        #expect(Self.train(common + ["-o", sandbox.path("again")]).error == nil)
        for file in ["adapter_model.safetensors", "adapter_config.json"] {
            #expect(try sandbox.bytes("out/" + file) != Data() && (try sandbox.bytes("out/" + file)) == (try sandbox.bytes("again/" + file)), "\(file)")
        }
        // A finished output is kept, unless --force.
        let refused = Self.train(common + ["-o", out])
        #expect(refused.tesseraError?.code == .conflict && refused.tesseraError?.description.contains("--force") == true)
        #expect(Self.train(common + ["-o", out, "--force"]).error == nil)
        #expect(try sandbox.bytes("out/adapter_model.safetensors") == (try sandbox.bytes("again/adapter_model.safetensors")))
        // Another seed, other bytes.
        #expect(Self.train(common.map { $0 == "11" ? "12" : $0 } + ["-o", sandbox.path("other")]).error == nil)
        #expect(try sandbox.bytes("other/adapter_model.safetensors") != (try sandbox.bytes("out/adapter_model.safetensors")))
    }

    @Test func theBestEvaluatedAdapterIsWritten() throws {
        let sandbox = try Sandbox()
        let model = try sandbox.tinyLlamaFolder()
        let task = try Self.task(sandbox)
        let held = try Self.task(sandbox, "held.jsonl", lines: [#"{"tessera_task": 1, "type": "perplexity", "name": "held"}"#,
                                                                #"{"text": "the sky is blue and the grass is green"}"#])
        let out = sandbox.path("out")
        let run = Self.train([model, "--task", task, "--eval-task", held, "--eval-every", "2", "--steps", "6", "--batch-size", "4",
                              "--lr", "5e-2", "--threads", "1", "-o", out, "--json"])
        #expect(run.error == nil, "\(String(describing: run.error))")
        let training = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: out + "/training.json"))))
        let evaluations = try #require(training["evaluations"]?.arrayValue)
        #expect(evaluations.compactMap { $0["step"]?.intValue } == [2, 4, 6])
        let best = try #require(evaluations.min { ($0["loss"]?.doubleValue ?? .infinity) < ($1["loss"]?.doubleValue ?? .infinity) })
        #expect(training["best_step"]?.intValue == best["step"]?.intValue)
        #expect(training["adapter_from_step"]?.intValue == best["step"]?.intValue)
    }

    @Test func anInitialAdapterIsTheStartingPoint() throws {
        let sandbox = try Sandbox()
        let model = try sandbox.tinyLlamaFolder()
        let task = try Self.task(sandbox)
        let initial = PackagePaths.fixtures + "/training/curve/initial_adapter"  // PEFT's: r 4, alpha 8, q/k/v/o
        let out = sandbox.path("out")
        // One step at the warm-up's rate 0: the written factors are the initial adapter's, bit for bit.
        let run = Self.train([model, "--task", task, "--init-adapter", initial, "--rank", "4", "--alpha", "8", "--steps", "1",
                              "--warmup", "1", "--batch-size", "2", "--threads", "1", "-o", out, "--json"])
        #expect(run.error == nil, "\(String(describing: run.error))")
        let given = try SafetensorsTestReader(path: initial + "/adapter_model.safetensors")
        let written = try SafetensorsTestReader(path: out + "/adapter_model.safetensors")
        #expect(Set(given.names) == Set(written.names) && given.names.count == 16)
        for name in given.names { #expect(try given.bytes(name) == (try written.bytes(name)), "\(name)") }
        let training = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: out + "/training.json"))))
        #expect(training["hyperparameters"]?["init"]?["sha256"]?.stringValue?.count == 64)
        // Another rank, or other modules, do not fit.
        for extra in [["--rank", "8", "--alpha", "16"], ["--rank", "4", "--alpha", "4"], ["--rank", "4", "--alpha", "8", "--targets", "q_proj,v_proj"]] {
            let refused = Self.train([model, "--task", task, "--init-adapter", initial, "--steps", "1", "-o", sandbox.path("no")] + extra)
            #expect(refused.tesseraError?.code == .invalidParameter, "\(extra): \(String(describing: refused.error))")
            #expect(!FileManager.default.fileExists(atPath: sandbox.path("no")))
        }
    }

    @Test func aBaseAtARevisionRecordsItsCommitAndObjects() throws {
        let sandbox = try Sandbox()
        let repo = try sandbox.makeRepository()
        _ = try sandbox.tinyLlamaFolder(repo + "/tiny")
        try sandbox.run("git add tiny && git commit -qm tiny", in: repo)
        let head = try sandbox.run("git rev-parse HEAD", in: repo).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let task = try Self.task(sandbox)
        let out = sandbox.path("out")
        let run = Self.train(["HEAD:tiny", "--task", task, "--steps", "2", "--batch-size", "2", "--threads", "1", "-o", out, "-C", sandbox.path(repo)])
        #expect(run.error == nil, "\(String(describing: run.error))")
        let training = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: out + "/training.json"))))
        #expect(training["base"]?["commit"]?.stringValue == head)
        let objects = try #require(training["base"]?["tensor_objects"]?.objectValue)
        #expect(objects.count > 10 && objects.allSatisfy { ($0.1.stringValue?.count ?? 0) == 64 })
    }
}

/// The tensor names and shapes of a safetensors file, read independently of the code under test.
struct SafetensorsTestReader {
    let header: JSONValue
    let data: [UInt8]
    let start: Int
    init(path: String) throws {
        data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let n = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        header = try JSONParser.parse(Array(data[8..<(8 + n)]))
        start = 8 + n
    }
    func bytes(_ name: String) throws -> [UInt8] {
        guard let offsets = header[name]?["data_offsets"]?.arrayValue?.compactMap(\.intValue), offsets.count == 2,
              offsets[0] <= offsets[1], start + offsets[1] <= data.count else { throw TesseraError(.notFound, "no tensor \(name)") }
        return Array(data[(start + offsets[0])..<(start + offsets[1])])
    }
    var names: [String] { (header.objectValue ?? []).map(\.0).filter { $0 != "__metadata__" } }
    func shape(_ name: String) -> [Int]? { header[name]?["shape"]?.arrayValue?.compactMap(\.intValue) }
}
