import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO
import TesseraTraining

/// Batches and parameters no pass can compute are refused with one line, before anything is computed or changed.
@Suite struct TrainingBadInputTests {
    static func model(_ fixture: String = "tiny_llama") throws -> any TrainableLanguageModel {
        try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/" + fixture))
    }

    static func refuses(_ model: any TrainableLanguageModel, _ batch: [TrainingSequence], mentioning text: String) {
        for pass in 0..<2 {
            do {
                if pass == 0 {
                    _ = try model.accumulateGradients(batch, lossScale: 1, dropoutSeed: 1)
                } else {
                    _ = try model.loss(batch)
                }
                Issue.record("a bad batch was accepted (\(text))")
            } catch let error as TesseraError {
                #expect(error.message.contains(text), "\(error.message)")
                #expect(!error.message.contains("\n"))
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
    }

    @Test(arguments: ["tiny_llama", "tiny_gpt2", "tiny_gptneo"])
    func badBatchesAreRefused(fixture: String) throws {
        let model = try Self.model(fixture)
        try model.attach(TrainingFixtures.randomParameters(for: model))
        let vocabulary = Int32(model.vocabularySize)
        Self.refuses(model, [TrainingSequence(text: [1, 2]), TrainingSequence(text: [3, vocabulary])], mentioning: "outside the model's vocabulary")
        Self.refuses(model, [TrainingSequence(text: [-5, 2])], mentioning: "outside the model's vocabulary")
        Self.refuses(model, [TrainingSequence(tokens: [1, 2], targets: [2, vocabulary + 7])], mentioning: "target")
        Self.refuses(model, [TrainingSequence(text: [1, 2]), TrainingSequence(tokens: [], targets: [])], mentioning: "is empty")
        Self.refuses(model, [TrainingSequence(text: [Int32](repeating: 1, count: model.maxSequenceLength + 1))], mentioning: "context")
        Self.refuses(model, [TrainingSequence(tokens: [1, 2, 3], targets: [2, 3])], mentioning: "3 tokens but 2 targets")
        // The context itself is fine, and a batch with nothing counted costs nothing.
        let full = try model.loss([TrainingSequence(text: [Int32](repeating: 1, count: model.maxSequenceLength))])
        #expect(full.count == model.maxSequenceLength - 1 && full.sum.isFinite)
        #expect(try model.accumulateGradients([TrainingSequence(tokens: [1, 2], targets: [-1, -1])], lossScale: 1, dropoutSeed: 0) == LossSum())
        #expect(try model.loss([]) == LossSum())
    }

    @Test func badParametersAreRefusedAndChangeNothing() throws {
        let model = try Self.model()
        let batch = TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [6])
        let good = TrainingFixtures.randomParameters(for: model, only: ["q_proj"])
        try model.attach(good)
        let before = try model.loss(batch)
        func refused(_ parameters: LoRAParameters, _ text: String) {
            #expect(throws: TesseraError.self, "\(text)") { try model.attach(parameters) }
        }
        let q = model.adaptableModules.first { $0.shortName == "q_proj" }!
        let unknown = AdaptableModule(name: "model.layers.9.self_attn.q_proj", outputs: q.outputs, inputs: q.inputs)
        refused(LoRAParameters(modules: [LoRAModuleParameters(module: unknown, rank: 1, scaling: 1, a: .init(repeating: 0, count: q.inputs),
                                                              b: .init(repeating: 0, count: q.outputs))]), "unknown module")
        let wrong = AdaptableModule(name: q.name, outputs: q.outputs + 1, inputs: q.inputs)
        refused(LoRAParameters(modules: [LoRAModuleParameters(module: wrong, rank: 1, scaling: 1, a: .init(repeating: 0, count: q.inputs),
                                                              b: .init(repeating: 0, count: q.outputs + 1))]), "wrong shape")
        let twice = LoRAModuleParameters(module: q, rank: 1, scaling: 1, a: .init(repeating: 0, count: q.inputs), b: .init(repeating: 0, count: q.outputs))
        refused(LoRAParameters(modules: [twice, twice]), "module given twice")
        let truncated = LoRAModuleParameters(module: q, rank: 1, scaling: 1, a: .init(repeating: 0, count: q.inputs), b: .init(repeating: 0, count: q.outputs))
        truncated.a.removeLast()
        refused(LoRAParameters(modules: [truncated]), "factor resized after init")
        refused(LoRAParameters(modules: [], dropout: 1), "dropout 1")
        refused(LoRAParameters(modules: [], dropout: .nan), "dropout NaN")
        #expect(try model.loss(batch) == before, "a refused attach changed nothing")
        #expect(throws: TesseraError.self) { _ = try model.accumulateGradients(batch, lossScale: .nan, dropoutSeed: 0) }
        #expect(throws: TesseraError.self) { _ = try TrainableModels.make(NSObject()) }
    }
}

/// Dropout on the LoRA input: the same seed gives the same gradients, another seed others; without dropout the
/// seed does not matter; and the loss is the plain sum of the counted cross-entropies, so micro-batches add.
@Suite struct DropoutAndAccumulationTests {
    static func gradients(_ model: any TrainableLanguageModel, _ parameters: LoRAParameters, _ batch: [TrainingSequence], seed: UInt64,
                          scale: Float = 1) throws -> (LossSum, [Float]) {
        parameters.zeroGradients()
        let loss = try model.accumulateGradients(batch, lossScale: scale, dropoutSeed: seed)
        return (loss, parameters.modules.flatMap { $0.gradientA + $0.gradientB })
    }

    @Test func dropoutMasksFollowTheSeed() throws {
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_llama"))
        let batch = TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [7, 4])
        let parameters = TrainingFixtures.randomParameters(for: model, dropout: 0.3)
        try model.attach(parameters)
        let (l1, g1) = try Self.gradients(model, parameters, batch, seed: 11)
        let (l2, g2) = try Self.gradients(model, parameters, batch, seed: 11)
        let (l3, g3) = try Self.gradients(model, parameters, batch, seed: 12)
        #expect(l1 == l2 && g1 == g2)
        #expect(l1 != l3 && g1 != g3)
        parameters.dropout = 0
        try model.attach(parameters)
        let (n1, h1) = try Self.gradients(model, parameters, batch, seed: 11)
        let (n2, h2) = try Self.gradients(model, parameters, batch, seed: 12)
        #expect(n1 == n2 && h1 == h2)
        #expect(n1 == (try model.loss(batch)))
    }

    @Test func microBatchesAddUp() throws {
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_gpt2"))
        let batch = TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [7, 4, 9])
        let parameters = TrainingFixtures.randomParameters(for: model)
        try model.attach(parameters)
        let (whole, g) = try Self.gradients(model, parameters, batch, seed: 0, scale: 0.5)
        parameters.zeroGradients()
        let first = try model.accumulateGradients(Array(batch.prefix(1)), lossScale: 0.5, dropoutSeed: 0)
        let rest = try model.accumulateGradients(Array(batch.dropFirst()), lossScale: 0.5, dropoutSeed: 0)
        let summed = parameters.modules.flatMap { $0.gradientA + $0.gradientB }
        #expect(abs((first + rest).sum - whole.sum) < 1e-6 * whole.sum && (first + rest).count == whole.count)
        var worst: Float = 0, largest: Float = 0
        for (a, b) in zip(g, summed) { worst = max(worst, abs(a - b)); largest = max(largest, abs(a)) }
        #expect(worst <= 1e-5 * largest, "largest gradient \(largest), difference \(worst)")
    }

    /// The GGUF and the Hugging Face files of the same tiny Llama give the same gradients in Hugging Face row order
    /// (the GGUF's q/k rows are permuted for RoPE; B's gradient must be permuted back).
    @Test func ggufAndHuggingFaceLlamaGiveTheSameGradients() throws {
        var results: [[Float]] = []
        for fixture in ["tiny_llama", "tiny_llama.gguf"] {
            let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/" + fixture))
            let parameters = TrainingFixtures.randomParameters(for: model)
            try model.attach(parameters)
            results.append(try Self.gradients(model, parameters, TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [10, 6]), seed: 0).1)
        }
        var worst: Float = 0, largest: Float = 0
        for (a, b) in zip(results[0], results[1]) { worst = max(worst, abs(a - b)); largest = max(largest, abs(a)) }
        #expect(results[0].count == results[1].count)
        #expect(worst <= 1e-4 * largest, "largest gradient \(largest), difference \(worst)")
    }
}
