import Foundation
import Testing
import TesseraIO
import TesseraTestSupport
import TesseraTraining

/// The training loop on a bigram test double: it learns, it is deterministic for a seed, gradient accumulation over
/// micro-batches equals the whole batch, a checkpoint resumes to the same bytes, the best evaluated adapter is kept.
@Suite struct TrainerLoopTests {
    static func trainer(steps: Int = 12, batch: Int = 4, micro: Int? = nil, seed: UInt64 = 1, dropout: Float = 0.1,
                        data: TrainingDataSet = bigramData(count: 10), evaluation: TrainingDataSet? = nil, evalEvery: Int = 0,
                        checkpointEvery: Int = 0, lr: Double = 0.05) throws -> LoRATrainer {
        let model = BigramTestModel()
        let lora = LoRASettings(rank: 2, alpha: 4, dropout: dropout, targets: ["proj"])
        let settings = TrainingSettings(steps: steps, batchSize: batch, microBatchSize: micro, learningRate: lr, warmupSteps: 2,
                                        schedule: .linear, adamW: AdamWSettings(weightDecay: 0.01), seed: seed, evalEvery: evalEvery,
                                        checkpointEvery: checkpointEvery)
        return try LoRATrainer(model: model, data: data, evaluation: evaluation, parameters: try lora.initialParameters(for: model, seed: seed),
                               settings: settings)
    }

    static func bits(_ p: LoRAParameters) -> [UInt32] { p.modules.flatMap { ($0.a + $0.b).map(\.bitPattern) } }

    @Test func theLossGoesDown() throws {
        let outcome = try Self.trainer(steps: 40, dropout: 0).run()
        #expect(outcome.state.losses.count == 40)
        #expect(outcome.finalLoss < outcome.state.losses[0] * 0.8, "\(outcome.state.losses)")
        // 10 sequences of 6 tokens in batches of 4: 4, 4, then 2 per epoch.
        let order = BatchOrder(count: 10, batchSize: 4, seed: 1)
        #expect(outcome.state.tokens == (0..<40).reduce(0) { $0 + order.batch(step: $1).count * 6 })
        #expect(outcome.state.tokens == 804)
    }

    @Test func theSameSeedGivesTheSameBitsAndAnotherSeedOthers() throws {
        let a = try Self.trainer().run(), b = try Self.trainer().run(), c = try Self.trainer(seed: 2).run()
        #expect(Self.bits(a.parameters) == Self.bits(b.parameters))
        #expect(a.state.losses == b.state.losses)
        #expect(Self.bits(a.parameters) != Self.bits(c.parameters))
    }

    @Test func microBatchesAccumulateToTheWholeBatch() throws {
        let whole = try Self.trainer(steps: 6, dropout: 0).run()
        let split = try Self.trainer(steps: 6, micro: 1, dropout: 0).run()
        for (x, y) in zip(whole.state.losses, split.state.losses) { #expect(abs(x - y) <= 1e-12 * max(1, abs(x))) }
        for (x, y) in zip(whole.parameters.modules[0].a + whole.parameters.modules[0].b, split.parameters.modules[0].a + split.parameters.modules[0].b) {
            #expect(abs(x - y) <= 1e-5 * max(1, abs(x)), "\(x) vs \(y)")
        }
    }

    @Test func theFirstStepOfAWarmUpDoesNotMoveTheFactors() throws {
        let t = try Self.trainer(steps: 1)
        let before = Self.bits(t.parameters)
        _ = try t.run()
        #expect(Self.bits(t.parameters) == before)
        #expect(t.moments[0].a.firstMoment.contains { $0 != 0 } || t.moments[0].b.firstMoment.contains { $0 != 0 })
    }

    @Test func aCheckpointResumesToTheSameBytes() throws {
        let sandbox = try Sandbox()
        let path = sandbox.path("out/.checkpoint/state.safetensors")
        let full = try Self.trainer(evaluation: bigramData(count: 3, seed: 9), evalEvery: 3).run()

        let first = try Self.trainer(evaluation: bigramData(count: 3, seed: 9), evalEvery: 3, checkpointEvery: 5)
        first.saveCheckpoint = { try TrainingCheckpoint.save($0, fingerprint: "run", to: path) }
        first.stopAfterSteps = 8  // as if killed after step 8: the checkpoint of step 5 is on disk
        _ = try first.run()

        let second = try Self.trainer(evaluation: bigramData(count: 3, seed: 9), evalEvery: 3, checkpointEvery: 5)
        #expect(try TrainingCheckpoint.load(into: second, fingerprint: "run", from: path) == 5)
        #expect(second.state.step == 5 && second.state.losses == Array(full.state.losses.prefix(5)))
        let resumed = try second.run()
        #expect(resumed.resumedFromStep == 5)
        #expect(Self.bits(resumed.parameters) == Self.bits(full.parameters))
        #expect(resumed.state.losses == full.state.losses)
        #expect(resumed.bestStep == full.bestStep && resumed.bestLoss == full.bestLoss)
        #expect(resumed.state.tokens == full.state.tokens)
    }

    @Test func aCheckpointOfAnotherRunOrDamagedIsRefused() throws {
        let sandbox = try Sandbox()
        let path = sandbox.path("out/.checkpoint/state.safetensors")
        let t = try Self.trainer(checkpointEvery: 2)
        t.saveCheckpoint = { try TrainingCheckpoint.save($0, fingerprint: "run", to: path) }
        t.stopAfterSteps = 3
        _ = try t.run()
        #expect(throws: TesseraError.self) { try TrainingCheckpoint.load(into: try Self.trainer(), fingerprint: "other", from: path) }
        // Another rank: the same fingerprint cannot fit (tensor sizes are checked, not trusted).
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        for cut in [0, 7, 12, bytes.count / 2, bytes.count - 1] {
            try bytes.prefix(cut).write(to: URL(fileURLWithPath: path))
            let error = #expect(throws: TesseraError.self) { try TrainingCheckpoint.load(into: try Self.trainer(), fingerprint: "run", from: path) }
            #expect(error?.description.contains("\n") == false)
        }
        #expect(try TrainingCheckpoint.load(into: try Self.trainer(), fingerprint: "run", from: sandbox.path("none")) == nil)
    }

    @Test func theBestEvaluatedAdapterIsKept() throws {
        // A large rate overshoots: later evaluations get worse than an earlier one.
        let t = try Self.trainer(steps: 30, dropout: 0, evaluation: bigramData(count: 4, seed: 5), evalEvery: 2, lr: 0.05)
        let outcome = try t.run()
        let evaluations = outcome.state.evaluations
        #expect(evaluations.map(\.step) == Array(stride(from: 2, through: 30, by: 2)))
        let best = try #require(evaluations.min { $0.loss < $1.loss })
        #expect(outcome.bestStep == best.step && outcome.bestLoss == best.loss)
        // The adapter handed back gives the best evaluation loss again.
        let model = BigramTestModel()
        try model.attach(outcome.parameters)
        let again = try model.loss(bigramData(count: 4, seed: 5).sequences)
        #expect(abs(again.mean - best.loss) < 1e-12)
    }

    @Test func badSettingsAndDataAreRefused() throws {
        #expect(throws: TesseraError.self) { _ = try Self.trainer(steps: 0) }
        #expect(throws: TesseraError.self) { _ = try Self.trainer(batch: 2, micro: 3) }
        #expect(throws: TesseraError.self) { _ = try Self.trainer(data: TrainingDataSet(sequences: [])) }
        // A token the model does not have.
        #expect(throws: TesseraError.self) { _ = try Self.trainer(data: TrainingDataSet(sequences: [TrainingSequence(text: [1, 99])])) }
        let model = BigramTestModel()
        #expect(throws: TesseraError.self) { _ = try LoRASettings(rank: 2, targets: ["q_proj"]).initialParameters(for: model, seed: 0) }
        #expect(throws: TesseraError.self) { _ = try LoRASettings(rank: 0, targets: ["proj"]).initialParameters(for: model, seed: 0) }
    }

    @Test func theInitialAdapterIsPEFTs() throws {
        let model = BigramTestModel(vocabulary: 11, dimension: 6)
        let p = try LoRASettings(rank: 3, alpha: 6, targets: ["proj"]).initialParameters(for: model, seed: 4)
        let m = p.modules[0]
        let bound = 1 / Float(6).squareRoot()
        #expect(m.a.count == 18 && m.a.allSatisfy { abs($0) <= bound } && Set(m.a).count == 18)
        #expect(m.b == [Float](repeating: 0, count: 33))
        #expect(m.scaling == 2)
        let q = try LoRASettings(rank: 3, alpha: 6, targets: ["proj"]).initialParameters(for: model, seed: 4)
        #expect(q.modules[0].a == m.a)
    }

    @Test func batchesVisitEachSequenceOncePerEpoch() {
        let order = BatchOrder(count: 10, batchSize: 4, seed: 3)
        #expect(order.batchesPerEpoch == 3)
        for epoch in 0..<3 {
            let seen = (0..<3).flatMap { order.batch(step: epoch * 3 + $0) }
            #expect(seen.sorted() == Array(0..<10))
        }
        #expect(order.batch(step: 2).count == 2)
        #expect(order.permutation(epoch: 0) != order.permutation(epoch: 1))
        #expect(BatchOrder(count: 10, batchSize: 4, seed: 4).permutation(epoch: 0) != order.permutation(epoch: 0))
    }
}
