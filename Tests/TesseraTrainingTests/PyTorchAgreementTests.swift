import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraTraining

/// Loss and every LoRA gradient against PyTorch + PEFT (Tests/Fixtures/training, scripts/make_training_fixtures.py:
/// float64 reference from the same float32 weights, seeded PEFT adapters with non-zero B, a two-sequence batch with
/// ignored targets): the loss sum within 1e-5 relative, each gradient tensor within 1e-4 of its norm.
@Suite struct PyTorchAgreementTests {
    static let folder = TrainingFixtures.trainingFixtures

    struct Batch: Decodable {
        var tokens: [[Int32]]
        var targets: [[Int32]]?
        var labels: [Int]?
    }

    static func batch(_ name: String) throws -> Batch {
        try JSONDecoder().decode(Batch.self, from: Data(contentsOf: URL(fileURLWithPath: folder + "/\(name)/batch.json")))
    }

    /// Compares every factor's gradient with PyTorch's; returns the worst relative difference.
    static func compare(_ parameters: LoRAParameters, keys: [(a: String, b: String)], expected: SafetensorsFile, label: String) throws -> Float {
        var worst: Float = 0
        for (m, key) in zip(parameters.modules, keys) {
            for (got, name) in [(m.gradientA, key.a), (m.gradientB, key.b)] {
                let want = try expected.floats("grad." + name)
                #expect(want.count == got.count, "\(name)")
                var difference: Float = 0, norm: Float = 0
                for (g, w) in zip(got, want) { difference += (g - w) * (g - w); norm += w * w }
                let relative = difference.squareRoot() / max(norm.squareRoot(), 1e-12)
                worst = max(worst, relative)
                #expect(relative < 1e-4, "\(label) \(name): ‖Δ‖/‖∂‖ = \(relative)")
            }
        }
        return worst
    }

    @Test(arguments: [("llama", "tiny_llama"), ("llama", "tiny_llama.gguf"), ("gpt2", "tiny_gpt2"), ("gptneo", "tiny_gptneo")])
    func causalLanguageModels(name: String, model fixture: String) throws {
        let expected = try SafetensorsFile(path: Self.folder + "/\(name)/expected.safetensors")
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/" + fixture))
        let (parameters, keys) = try TrainingFixtures.parametersAndKeys(adapterFolder: Self.folder + "/\(name)/adapter")
        #expect(parameters.modules.count == model.adaptableModules.count, "the fixture's adapter covers every adaptable module")
        try model.attach(parameters)
        let batch = try Self.batch(name)
        let sequences = zip(batch.tokens, batch.targets ?? []).map { TrainingSequence(tokens: $0, targets: $1) }
        let loss = try model.accumulateGradients(sequences, lossScale: 1, dropoutSeed: 0)
        let wantLoss = Double(try expected.floats("loss_sum")[0]), wantCount = Int(try expected.floats("count")[0])
        #expect(loss.count == wantCount)
        #expect(abs(loss.sum - wantLoss) / wantLoss < 1e-5, "\(fixture): loss \(loss.sum), PyTorch \(wantLoss)")
        let worst = try Self.compare(parameters, keys: keys, expected: expected, label: fixture)
        print("\(fixture): loss \(loss.sum) (PyTorch \(wantLoss)); worst gradient ‖Δ‖/‖∂‖ \(worst)")
    }

    @Test func bertClassifier() throws {
        let directory = Self.folder + "/bert"
        let expected = try SafetensorsFile(path: directory + "/expected.safetensors")
        let model = try TrainableModels.makeClassifier(try BERTModel.load(directory: directory + "/model"))
        let (parameters, keys) = try TrainingFixtures.parametersAndKeys(adapterFolder: directory + "/adapter")
        try model.attach(parameters)
        let headFile = try SafetensorsFile(path: directory + "/model/head.safetensors")
        let weight = try headFile.floats("weight"), bias = try headFile.floats("bias")
        let head = LinearHeadParameters(outputs: bias.count, inputs: weight.count / bias.count, weight: weight, bias: bias)
        try model.attachHead(head)
        let batch = try Self.batch("bert")
        let examples = zip(batch.tokens, batch.labels ?? []).map { ClassificationExample(tokens: $0, label: $1) }
        let loss = try model.accumulateGradients(examples, lossScale: 1, dropoutSeed: 0)
        let wantLoss = Double(try expected.floats("loss_sum")[0])
        #expect(loss.count == 2)
        #expect(abs(loss.sum - wantLoss) / wantLoss < 1e-5, "BERT: loss \(loss.sum), PyTorch \(wantLoss)")
        let worst = try Self.compare(parameters, keys: keys, expected: expected, label: "bert")
        // The head's gradients: PyTorch's classifier.weight / classifier.bias (with the adapter attached).
        for (got, name) in [(head.gradientWeight, "weight_grad.classifier.weight"), (head.gradientBias, "weight_grad.classifier.bias")] {
            let want = try expected.floats(name)
            var difference: Float = 0, norm: Float = 0
            for (g, w) in zip(got, want) { difference += (g - w) * (g - w); norm += w * w }
            #expect(want.count == got.count && difference.squareRoot() < 1e-4 * norm.squareRoot(), "\(name)")
        }
        print("bert: loss \(loss.sum) (PyTorch \(wantLoss)); worst gradient ‖Δ‖/‖∂‖ \(worst)")
    }
}
