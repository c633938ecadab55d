import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraTestSupport
import TesseraTraining

/// The trainer on the real tiny Llama against PEFT + torch (Tests/Fixtures/training/curve/, see its README): from
/// the same initial adapter, 20 steps of AdamW under a linear warm-up schedule give the same loss at every step
/// within 1e-4 relative, and the same final adapter.
@Suite struct TrainerCurveTests {
    static let folder = TrainingFixtures.trainingFixtures + "/curve"

    static func json(_ path: String) throws -> JSONValue { try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: path)))) }

    @Test func theLossCurveIsPEFTs() throws {
        let engine = try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_llama")
        let model = try TrainableModels.make(engine)
        let parameters = try TrainingFixtures.parameters(adapterFolder: Self.folder + "/initial_adapter")
        let batchJSON = try Self.json(Self.folder + "/batch.json")
        let tokens = try #require(batchJSON["tokens"]?.arrayValue), targets = try #require(batchJSON["targets"]?.arrayValue)
        let batch = zip(tokens, targets).map { t, y in
            TrainingSequence(tokens: (t.arrayValue ?? []).compactMap(\.intValue).map(Int32.init),
                             targets: (y.arrayValue ?? []).compactMap(\.intValue).map(Int32.init))
        }
        let reference = try Self.json(Self.folder + "/losses.json")
        let expected = (reference["losses"]?.arrayValue ?? []).compactMap(\.doubleValue)
        let rates = (reference["lr_per_step"]?.arrayValue ?? []).compactMap(\.doubleValue)
        #expect(expected.count == 20 && rates.count == 20 && batch.count == 4)
        let steps = try #require(reference["steps"]?.intValue), warmup = try #require(reference["warmup"]?.intValue)
        let lr = try #require(reference["lr"]?.doubleValue)
        for k in 0..<steps { #expect(abs(LearningRateSchedule.linear.rate(base: lr, step: k, warmup: warmup, total: steps) - rates[k]) <= 1e-15) }

        let settings = TrainingSettings(steps: steps, batchSize: 4, learningRate: lr, warmupSteps: warmup, schedule: .linear,
                                        adamW: AdamWSettings(weightDecay: reference["weight_decay"]?.doubleValue ?? 0), seed: 0)
        let trainer = try LoRATrainer(model: model, data: TrainingDataSet(sequences: batch), parameters: parameters, settings: settings)
        let outcome = try trainer.run()
        var worst = 0.0
        for (k, (x, y)) in zip(outcome.state.losses, expected).enumerated() {
            worst = max(worst, abs(x - y) / abs(y))
            #expect(abs(x - y) <= 1e-4 * abs(y), "step \(k): \(x) vs PEFT \(y)")
        }
        print("tiny Llama 20-step curve: worst relative loss difference \(worst)")
        // The loss went down, so the comparison is not of a flat curve.
        #expect(expected[19] < expected[0] - 0.2)

        // The final adapter: each factor within 1e-4 of its largest value.
        let final = try TrainingFixtures.parameters(adapterFolder: Self.folder + "/final_adapter")
        for m in final.modules {
            let mine = try #require(outcome.parameters.module(named: m.module.name))
            for (ours, theirs) in [(mine.a, m.a), (mine.b, m.b)] {
                let scale = theirs.map { abs($0) }.max() ?? 1
                let diff = zip(ours, theirs).map { abs($0 - $1) }.max() ?? 0
                #expect(diff <= 1e-4 * scale, "\(m.module.name): \(diff) of \(scale)")
            }
        }
    }
}
