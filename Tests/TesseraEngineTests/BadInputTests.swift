import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// Loading refuses inputs it cannot run, before computing, with errors that name the problem.
@Suite struct BadInputTests {
    func expectError(_ code: TesseraError.Code, mentioning words: [String], _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("expected a \(code) error")
        } catch let e as TesseraError {
            #expect(e.code == code, "\(e)")
            for w in words { #expect(e.description.contains(w), "'\(w)' not in: \(e)") }
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    /// Copies a fixture model directory into a temporary one, with config edits and tensors dropped or reshaped.
    func modifiedCopy(of fixture: String, config edit: (inout [(String, JSONValue)]) -> Void = { _ in },
                      tensors change: (inout [(String, RawTensor)]) -> Void = { _ in }) throws -> String {
        let directory = try EngineFixtures.temporaryDirectory("bad")
        let source = EngineFixtures.fixtures + "/" + fixture
        var config = try #require(try EngineFixtures.json(source + "/config.json").objectValue)
        edit(&config)
        try Data(JSONValue.object(config).serialized().utf8).write(to: URL(fileURLWithPath: directory + "/config.json"))
        let weights = try SafetensorsFile(path: source + "/model.safetensors")
        var tensors = try weights.tensorNames.map { ($0, try weights.tensor($0)) }
        change(&tensors)
        try SafetensorsWriter.write(tensors: tensors, to: directory + "/model.safetensors")
        return directory
    }

    @Test func unsupportedArchitecture() throws {
        let directory = try modifiedCopy(of: "tiny_gpt2") { config in
            config = config.map { $0.0 == "model_type" ? ($0.0, .string("mamba")) : $0 }
        }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        expectError(.unsupported, mentioning: ["mamba"]) { _ = try ModelLoader.load(path: directory) }
    }

    @Test func unsupportedGGUFArchitecture() throws {
        let gguf = try GGUFFile(path: EngineFixtures.fixtures + "/quant_types.gguf")
        expectError(.unsupported, mentioning: ["test"]) { _ = try ModelLoader.load(source: gguf) }
    }

    @Test func unsupportedQuantTypeIsReportedAtLoad() throws {
        expectError(.unsupported, mentioning: ["blk.1.ffn_down.weight", "Q5_1"]) {
            _ = try ModelLoader.load(path: EngineFixtures.fixtures + "/tiny_llama_q5_1.gguf")
        }
    }

    @Test func missingTensor() throws {
        let directory = try modifiedCopy(of: "tiny_gptneo", tensors: { tensors in
            tensors.removeAll { $0.0 == "transformer.h.1.attn.attention.k_proj.weight" }
        })
        defer { try? FileManager.default.removeItem(atPath: directory) }
        expectError(.notFound, mentioning: ["transformer.h.1.attn.attention.k_proj.weight"]) { _ = try ModelLoader.load(path: directory) }
    }

    @Test func shapeDisagreesWithConfig() throws {
        let directory = try modifiedCopy(of: "tiny_llama") { config in
            config = config.map { $0.0 == "intermediate_size" ? ($0.0, .int(96)) : $0 }
        }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        expectError(.shapeMismatch, mentioning: ["model.layers.0.mlp.gate_proj.weight", "[128, 64]", "[96, 64]"]) {
            _ = try ModelLoader.load(path: directory)
        }
    }

    @Test func tokenizerVocabularyLargerThanModel() throws {
        expectError(.shapeMismatch, mentioning: ["1000", "100"]) {
            _ = try ModelLoader.load(path: EngineFixtures.fixtures + "/tiny_gpt2", tokenizerVocabularySize: 1000)
        }
        _ = try ModelLoader.load(path: EngineFixtures.fixtures + "/tiny_gpt2", tokenizerVocabularySize: 100)
    }

    @Test func tokenOutsideVocabularyAndOverlongInput() throws {
        let model = try ModelLoader.load(path: EngineFixtures.fixtures + "/tiny_gpt2")
        expectError(.invalidParameter, mentioning: ["100"]) { _ = try model.logits([1, 100]) }
        expectError(.invalidParameter, mentioning: ["33", "32"]) { _ = try model.logits(Array(repeating: 1, count: 33)) }
    }
}
