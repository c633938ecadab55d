import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO
import TesseraTestSupport
import TesseraTraining

/// PhatGOOSE gates against PyTorch (Tests/Fixtures/phatgoose, scripts/make_phatgoose_fixtures.py: the tiny Llama with
/// a PEFT adapter on every linear layer and a sigmoid gate per module, float64 autograd): the loss and every gate's
/// gradient at random gates, a 10-step gate-training run (losses and final gates), and the gates file: round trip,
/// PyTorch's file read, damaged files refused with one line.
@Suite struct PhatGOOSEGateTests {
    static let folder = PackagePaths.fixtures + "/phatgoose"

    struct Sequence: Decodable {
        var tokens: [Int32]
        var targets: [Int32]
    }

    static func sequences(_ file: String) throws -> [TrainingSequence] {
        try JSONDecoder().decode([Sequence].self, from: Data(contentsOf: URL(fileURLWithPath: folder + "/" + file)))
            .map { TrainingSequence(tokens: $0.tokens, targets: $0.targets) }
    }

    static func expert() throws -> LoRAParameters {
        let tensors = try SafetensorsFile(path: folder + "/adapter/adapter_model.safetensors")
        let config = Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/adapter/adapter_config.json")))
        let adapter = try LoRAAdapter(configBytes: config, tensors: tensors, name: "adapter")
        return try PhatGOOSEGateTrainer.expert(adapter, tensors: tensors, name: "adapter")
    }

    /// ‖a − b‖ / ‖b‖.
    static func relative(_ a: [Float], _ b: [Float]) -> Float {
        var difference: Float = 0, norm: Float = 0
        for (x, y) in zip(a, b) { difference += (x - y) * (x - y); norm += y * y }
        return difference.squareRoot() / max(norm.squareRoot(), 1e-30)
    }

    @Test(arguments: ["tiny_llama", "tiny_llama.gguf"])
    func gateGradientsArePyTorchs(fixture: String) throws {
        let expected = try SafetensorsFile(path: Self.folder + "/expected.safetensors")
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/" + fixture))
        let expert = try Self.expert()
        #expect(expert.modules.count == 14 && expert.modules.allSatisfy(\.frozen))
        let gates = try PhatGOOSEGates.read(path: Self.folder + "/gates.safetensors")
        try gates.attach(to: expert)
        try model.attach(expert)
        let loss = try model.accumulateGradients(try Self.sequences("batch.json"), lossScale: 1, dropoutSeed: 0)
        let wantLoss = Double(try expected.floats("loss_sum")[0])
        #expect(loss.count == Int(try expected.floats("count")[0]))
        #expect(abs(loss.sum - wantLoss) <= 1e-6 * wantLoss, "\(fixture): loss \(loss.sum), PyTorch \(wantLoss)")
        var worst: Float = 0
        for m in expert.modules {
            let want = try expected.floats("grad.\(m.module.name).gate")
            let got = try #require(m.gate).gradient
            #expect(got.count == want.count)
            let r = Self.relative(got, want)
            worst = max(worst, r)
            #expect(r <= 1e-5, "\(fixture) \(m.module.name): ‖Δ‖/‖∂g‖ = \(r)")
            // A frozen expert's factors get no gradient.
            #expect(m.gradientA.allSatisfy { $0 == 0 } && m.gradientB.allSatisfy { $0 == 0 })
        }
        print("\(fixture) gates: loss \(loss.sum) (PyTorch \(wantLoss)); worst gate gradient ‖Δ‖/‖∂‖ \(worst)")
        // Forward only gives the same loss; without the gates the loss differs (the gates are in the forward).
        let again = try model.loss(try Self.sequences("batch.json"))
        #expect(abs(again.sum - loss.sum) <= 1e-9 * loss.sum)
        for m in expert.modules { m.gate = nil }
        try model.attach(expert)
        #expect(abs(try model.loss(try Self.sequences("batch.json")).sum - loss.sum) > 1e-3)
    }

    /// A gated module that is not frozen: its A and B gradients (through σ ⊙ h) agree with finite differences.
    @Test func gatedFactorsAgreeWithFiniteDifferences() throws {
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_llama"))
        let parameters = TrainingFixtures.randomParameters(for: model, only: ["q_proj", "v_proj", "down_proj"])
        var state: UInt64 = 5
        for m in parameters.modules {
            m.gate = GateParameters(values: (0..<m.module.inputs).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return 0.3 * (Float(state >> 40) / Float(1 << 24) * 2 - 1)
            })
        }
        let check = GradientCheck(model: model, batch: TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [9, 5, 12]))
        let pairs = try check.pairs(parameters)
        var worst: Float = 0
        for (name, analytic, numeric) in pairs {
            let e = GradientCheck.relativeError(analytic, numeric)
            worst = max(worst, e)
            #expect(e < 0.03, "\(name): backward \(analytic), finite difference \(numeric)")
        }
        #expect(parameters.modules.allSatisfy { $0.gate?.gradient.contains { $0 != 0 } == true })
    }

    @Test func aShortRunIsPyTorchs() throws {
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_llama"))
        let reference = try SafetensorsFile(path: Self.folder + "/run_expected.safetensors")
        let settingsJSON = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: Self.folder + "/run_settings.json"))))
        let steps = try #require(settingsJSON["steps"]?.intValue), lr = try #require(settingsJSON["lr"]?.doubleValue)
        let data = try Self.sequences("run_data.json")
        let settings = PhatGOOSESettings(steps: steps, learningRate: lr, warmupRatio: 0.1, batchSize: data.count, seed: 3)
        #expect(settings.warmupSteps == settingsJSON["warmup_steps"]?.intValue)
        let expert = try Self.expert()
        let trainer = try PhatGOOSEGateTrainer(model: model, expert: expert, data: TrainingDataSet(sequences: data), settings: settings)
        var reported: [Double] = []
        trainer.onStep = { _, loss, _ in reported.append(loss) }
        let outcome = try trainer.run()
        let want = try reference.rawTensor("losses")
        #expect(want.dtype == .f64)
        let losses = try want.floats(name: "losses").map(Double.init)
        #expect(outcome.losses.count == steps && reported == outcome.losses)
        for (k, (x, y)) in zip(outcome.losses, losses).enumerated() {
            #expect(abs(x - y) <= 1e-5 * abs(y), "step \(k + 1): \(x) vs PyTorch \(y)")
        }
        #expect(losses[steps - 1] < losses[0] - 0.05, "the reference run learns")
        var worst: Float = 0
        for (name, values) in outcome.gates {
            let theirs = try reference.floats(name + ".gate")
            let scale = theirs.map { abs($0) }.max() ?? 0
            let difference = zip(values, theirs).map { abs($0 - $1) }.max() ?? .infinity
            worst = max(worst, difference / scale)
            #expect(values.count == theirs.count && difference <= 3e-4 * scale, "\(name): \(difference) of \(scale)")
        }
        print("10-step gate run: losses \(outcome.losses.first ?? 0) -> \(outcome.losses.last ?? 0); worst gate difference / max \(worst)")
        // The model is left without the expert (its loss is the base's); the expert's factors are untouched.
        let base = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_llama"))
        #expect(try model.loss(data).sum == (try base.loss(data).sum))
        let fresh = try Self.expert()
        #expect(zip(fresh.modules, expert.modules).allSatisfy { $0.a == $1.a && $0.b == $1.b })
    }

    // MARK: the gates file

    @Test func gatesRoundTripThroughTheFile() throws {
        let sandbox = try Sandbox()
        let gates = PhatGOOSEGates(gates: [("model.layers.1.mlp.down_proj", [1.5, -0, .leastNonzeroMagnitude, -3e38]),
                                           ("model.layers.0.self_attn.q_proj", [0.25, 2])],
                                   steps: 100, learningRate: 1e-3, metadata: [("seed", "42")])
        let path = sandbox.path("g.safetensors")
        try gates.write(to: path)
        let back = try PhatGOOSEGates.read(path: path)
        // Read back in name order, bit for bit.
        #expect(back.gates.map(\.module) == ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"])
        #expect(back.gate("model.layers.1.mlp.down_proj")?.map(\.bitPattern) == gates.gate("model.layers.1.mlp.down_proj")?.map(\.bitPattern))
        #expect(back.steps == 100 && back.learningRate == 1e-3 && back.metadata.first { $0.0 == "seed" }?.1 == "42")
        // It is an ordinary safetensors file with the documented names, shapes and metadata.
        let file = try SafetensorsFile(path: path)
        #expect(file.tensorInfo("model.layers.0.self_attn.q_proj.gate")?.shape == [2])
        #expect(file.tensorInfo("model.layers.1.mlp.down_proj.gate")?.dtype == .f32)
        // PyTorch's file (written by the fixture script) reads, with 14 gates.
        let theirs = try PhatGOOSEGates.read(path: Self.folder + "/gates.safetensors")
        #expect(theirs.gates.count == 14 && theirs.gate("model.layers.0.mlp.down_proj")?.count == 128)
        // Attaching refuses gates of another expert.
        let expert = try Self.expert()
        #expect(throws: TesseraError.self) { try gates.attach(to: expert) }
        var short = theirs
        short.gates[0].values.removeLast()
        #expect(throws: TesseraError.self) { try short.attach(to: expert) }
    }

    static func header(_ json: String) -> [UInt8] {
        var text = Array(json.utf8)
        while text.count % 8 != 0 { text.append(0x20) }
        var out = [UInt8]()
        var n = UInt64(text.count)
        for _ in 0..<8 { out.append(UInt8(truncatingIfNeeded: n)); n >>= 8 }
        return out + text
    }

    @Test func damagedGatesFilesAreRefusedWithOneLine() throws {
        let sandbox = try Sandbox()
        let meta = #""__metadata__":{"format":"tessera-phatgoose-gates","steps":"100","lr":"0.001"}"#
        let values = TrainingCheckpoint.floatBytes([1, 2, 3, 4])
        let cases: [(String, [UInt8])] = [
            ("matrix", Self.header("{\(meta),\"m.gate\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}") + values),
            ("f16", Self.header("{\(meta),\"m.gate\":{\"dtype\":\"F16\",\"shape\":[8],\"data_offsets\":[0,16]}}") + values),
            ("empty", Self.header("{\(meta),\"m.gate\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}")),
            ("name", Self.header("{\(meta),\"m.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}") + values),
            ("format", Self.header(#"{"__metadata__":{"format":"pt"},"m.gate":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#) + values),
            ("nan", Self.header("{\(meta),\"m.gate\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}")
                + TrainingCheckpoint.floatBytes([1, .nan, 3, 4])),
            ("truncated", Array((Self.header("{\(meta),\"m.gate\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}") + values).dropLast(3))),
            ("header", Array(Self.header("{\(meta),\"m.gate\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}").prefix(20))),
            ("tiny", [1, 2, 3]),
            ("huge shape", Self.header("{\(meta),\"m.gate\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,16]}}") + values),
        ]
        // The well-formed file these damage reads.
        let good = sandbox.path("good.safetensors")
        try Data(Self.header("{\(meta),\"m.gate\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}") + values).write(to: URL(fileURLWithPath: good))
        #expect(try PhatGOOSEGates.read(path: good).gate("m") == [1, 2, 3, 4])
        for (name, bytes) in cases {
            let path = sandbox.path(name.replacingOccurrences(of: " ", with: "_") + ".safetensors")
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                _ = try PhatGOOSEGates.read(path: path)
                Issue.record("\(name): a damaged gates file was read")
            } catch let e as TesseraError {
                #expect(!e.message.contains("\n") && e.message.contains(path), "\(name): \(e.message)")
            }
        }
        // A gate of the wrong length is refused when attached to a model.
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_llama"))
        let expert = try Self.expert()
        expert.modules[0].gate = GateParameters(values: [1, 2, 3])
        #expect(throws: TesseraError.self) { try model.attach(expert) }
    }
}
