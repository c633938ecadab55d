import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraTraining

/// The whole training loop (LoRATrainer: backward through the tiny Llama, AdamW, the linear warm-up schedule) against
/// 20 steps of PyTorch + PEFT from the same initial adapter and batch (Tests/Fixtures/training/curve, made by
/// scripts/make_training_fixtures.py): each step's loss within 1e-4 relative, and the final adapter's factors.
@Suite struct PEFTLossCurveTests {
    static let folder = TrainingFixtures.trainingFixtures + "/curve"

    struct Curve: Decodable {
        var losses: [Double]
        var lr_per_step: [Double]
    }

    struct Batch: Decodable {
        var tokens: [[Int32]]
        var targets: [[Int32]]
    }

    @Test func twentyStepsFollowPEFTsLossCurve() throws {
        let curve = try JSONDecoder().decode(Curve.self, from: Data(contentsOf: URL(fileURLWithPath: Self.folder + "/losses.json")))
        let batch = try JSONDecoder().decode(Batch.self, from: Data(contentsOf: URL(fileURLWithPath: Self.folder + "/batch.json")))
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_llama"))
        let (parameters, keys) = try TrainingFixtures.parametersAndKeys(adapterFolder: Self.folder + "/initial_adapter")
        let data = TrainingDataSet(sequences: zip(batch.tokens, batch.targets).map { TrainingSequence(tokens: $0, targets: $1) })
        let settings = TrainingSettings(steps: 20, batchSize: data.sequences.count, learningRate: 1e-3, warmupSteps: 2,
                                        schedule: .linear, adamW: AdamWSettings(weightDecay: 0), seed: 0)
        let trainer = try LoRATrainer(model: model, data: data, parameters: parameters, settings: settings)
        let outcome = try trainer.run()
        #expect(outcome.state.losses.count == 20)
        for (k, (got, want)) in zip(outcome.state.losses, curve.losses).enumerated() {
            #expect(abs(got - want) / want < 1e-4, "step \(k): loss \(got), PEFT \(want)")
        }
        // The curve moves: a loop that did not update would fail here.
        #expect(curve.losses[0] - curve.losses[19] > 0.3)

        let final = try SafetensorsFile(path: Self.folder + "/final_adapter/adapter_model.safetensors")
        for (m, key) in zip(outcome.parameters.modules, keys) {
            for (got, name) in [(m.a, key.a), (m.b, key.b)] {
                let want = try final.floats(name)
                var difference: Float = 0, norm: Float = 0
                for (g, w) in zip(got, want) { difference += (g - w) * (g - w); norm += w * w }
                #expect(difference.squareRoot() / max(norm.squareRoot(), 1e-12) < 1e-3, "\(name)")
            }
        }
    }
}
