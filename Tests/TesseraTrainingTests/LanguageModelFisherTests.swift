import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO
import TesseraTestSupport
import TesseraTraining

/// The full-model gradient and the diagonal Fisher of the Llama, GPT-2 and GPT-Neo trainers against PyTorch autograd
/// (Tests/Fixtures/training/{llama,gpt2,gptneo}'s `base_weight_grad.*`, scripts/make_training_fixtures.py;
/// Tests/Fixtures/training/fisher, scripts/make_fisher_fixtures.py; float64 references), on the Hugging Face tiny
/// Llama and its GGUF (q/k rows permuted, put back for the output), the tiny GPT-2 (Conv1D weights [in, out]) and
/// GPT-Neo (q/k/v without bias, a local layer); central finite differences on single weights; refusals.
@Suite struct LanguageModelFisherTests {
    static let folder = TrainingFixtures.trainingFixtures
    static let fixtures = ["tiny_llama", "tiny_llama.gguf", "tiny_gpt2", "tiny_gptneo"]

    /// The training fixture folder and the Fisher fixtures' file prefix of an engine fixture.
    static func references(_ fixture: String) -> (training: String, fisher: String) {
        switch fixture {
        case "tiny_gpt2": return ("gpt2", "gpt2_")
        case "tiny_gptneo": return ("gptneo", "gptneo_")
        default: return ("llama", "")
        }
    }

    static func model(_ fixture: String) throws -> any WeightGradientModel {
        let trainable = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/" + fixture))
        return try #require(trainable as? any WeightGradientModel)
    }

    /// ‖got − want‖ / ‖want‖.
    static func relative(_ got: [Float], _ want: [Float]) -> Float {
        var difference = 0.0, norm = 0.0
        for (g, w) in zip(got, want) {
            difference += Double(g - w) * Double(g - w)
            norm += Double(w) * Double(w)
        }
        return Float((difference / max(norm, 1e-300)).squareRoot())
    }

    /// Every tensor of `flat` against `expected`'s `prefix + name`; the names must be exactly the fixture's.
    static func compare(_ model: any WeightGradientModel, flat: [Float], expected: SafetensorsFile, prefix: String, label: String,
                        tolerance: Float) throws -> Float {
        let fixtureNames = Set(expected.tensorNames.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) })
        #expect(Set(model.weightTensors.map(\.name)) == fixtureNames.subtracting(["log_likelihoods"]), "\(label): tensor names")
        #expect(flat.count == model.weightCount)
        var worst: Float = 0
        try flat.withUnsafeBufferPointer { f in
            let base = try #require(f.baseAddress)
            for slot in model.weightTensors {
                let want = try expected.floats(prefix + slot.name)
                let got = model.values(of: slot, from: base)
                #expect(got.count == want.count && slot.count == slot.shape.reduce(1, *), "\(slot.name)")
                let error = relative(got, want)
                worst = max(worst, error)
                #expect(error < tolerance, "\(label) \(slot.name): ‖Δ‖/‖want‖ = \(error)")
            }
        }
        return worst
    }

    @Test(arguments: fixtures)
    func theBaseGradientOfEveryWeightIsPyTorchs(fixture: String) throws {
        let model = try Self.model(fixture)
        let training = Self.references(fixture).training
        let expected = try SafetensorsFile(path: Self.folder + "/\(training)/expected.safetensors")
        let batch = try PyTorchAgreementTests.batch(training)
        let sequences = zip(batch.tokens, batch.targets ?? []).map { TrainingSequence(tokens: $0, targets: $1) }
        var flat = [Float](repeating: .nan, count: model.weightCount)
        let loss = try flat.withUnsafeMutableBufferPointer { try model.weightGradient(sequences, into: try #require($0.baseAddress), accumulate: false) }
        let want = Double(try expected.floats("base_loss_sum")[0])
        #expect(abs(loss.sum - want) / want < 1e-5, "\(fixture): loss \(loss.sum), PyTorch \(want)")
        let worst = try Self.compare(model, flat: flat, expected: expected, prefix: "base_weight_grad.", label: fixture, tolerance: 1e-4)
        print("\(fixture): base gradient, worst ‖Δ‖/‖∂‖ \(worst)")
        // Accumulating adds: twice the same batch is twice the gradient.
        let once = flat
        _ = try flat.withUnsafeMutableBufferPointer { try model.weightGradient(sequences, into: try #require($0.baseAddress), accumulate: true) }
        #expect(Self.relative(flat, once.map { 2 * $0 }) < 1e-6)
    }

    struct ChoiceFixture: Decodable {
        struct Example: Decodable { var context: [Int]; var choices: [[Int]] }
        var examples: [Example]
    }

    struct TextFixture: Decodable { var texts: [[Int32]] }

    @Test(arguments: fixtures)
    func theMultipleChoiceFisherIsPyTorchs(fixture: String) throws {
        let model = try Self.model(fixture)
        let prefix = Self.references(fixture).fisher
        let tasks = try JSONDecoder().decode(ChoiceFixture.self,
                                             from: Data(contentsOf: URL(fileURLWithPath: Self.folder + "/fisher/\(prefix)multiple_choice.json")))
        #expect(tasks.examples.map(\.choices.count) == [2, 3, 4])
        let examples = tasks.examples.map { e in
            LanguageModelFisher.Example(sequences: e.choices.map { TrainingData.pair(context: e.context, continuation: $0) }, choices: true)
        }
        // The choices' log-likelihoods first: what p(c|x) is made of.
        let expected = try SafetensorsFile(path: Self.folder + "/fisher/\(prefix)multiple_choice.safetensors")
        let lls = try expected.floats("log_likelihoods")
        let ours = try examples.flatMap { try $0.sequences.map { -(try model.loss([$0]).sum) } }
        #expect(ours.count == lls.count)
        for (a, b) in zip(ours, lls) { #expect(abs(a - Double(b)) < 1e-4 * max(1, abs(Double(b))), "\(a) vs \(b)") }
        let fisher = LanguageModelFisher(model: model)
        let flat = try fisher.diagonal(examples)
        let worst = try Self.compare(model, flat: flat, expected: expected, prefix: "", label: fixture + " multiple choice", tolerance: 1e-4)
        print("\(fixture): multiple-choice Fisher, worst ‖Δ‖/‖F‖ \(worst)")
        #expect(flat.allSatisfy { $0 >= 0 })
        // The tensors written for the merge: names and shapes of the checkpoint.
        let tensors = fisher.tensors(flat)
        #expect(tensors.map(\.name) == model.weightTensors.map(\.name))
        // One tensor whose layout is the architecture's own: a GQA key projection, a Conv1D [in, out], a bias-free key.
        let (name, shape): (String, [Int]) = switch fixture {
        case "tiny_gpt2": ("transformer.h.1.attn.c_attn.weight", [64, 192])
        case "tiny_gptneo": ("transformer.h.1.attn.attention.k_proj.weight", [64, 64])
        default: ("model.layers.1.self_attn.k_proj.weight", [32, 64])
        }
        #expect(tensors.first { $0.name == name }?.shape == shape)
        #expect(tensors.allSatisfy { $0.values.count == $0.shape.reduce(1, *) })
        // The check can fail: the same Fisher without the −ḡ (the gradients of ll_c themselves) is far off.
        let wrong = try LanguageModelFisher(model: model).diagonal(examples.flatMap { e in e.sequences.map { LanguageModelFisher.Example(sequences: [$0], choices: false) } })
        #expect(Self.relative(wrong, flat) > 0.1)
    }

    @Test(arguments: fixtures)
    func thePlainTextFisherIsPyTorchs(fixture: String) throws {
        let model = try Self.model(fixture)
        let prefix = Self.references(fixture).fisher
        let texts = try JSONDecoder().decode(TextFixture.self,
                                             from: Data(contentsOf: URL(fileURLWithPath: Self.folder + "/fisher/\(prefix)text.json"))).texts
        let expected = try SafetensorsFile(path: Self.folder + "/fisher/\(prefix)text.safetensors")
        let examples = texts.map { LanguageModelFisher.Example(sequences: [TrainingSequence(text: $0)], choices: false) }
        let flat = try LanguageModelFisher(model: model).diagonal(examples)
        let worst = try Self.compare(model, flat: flat, expected: expected, prefix: "", label: fixture + " text", tolerance: 1e-4)
        print("\(fixture): plain-text Fisher, worst ‖Δ‖/‖F‖ \(worst)")

        // A text cut into windows is one example: its windows' gradients add before the square, (g1 + g2)², not
        // g1² + g2².
        let windows = [TrainingSequence(text: Array(texts[0][0..<6])), TrainingSequence(text: Array(texts[0][5...]))]
        var g1 = [Float](repeating: 0, count: model.weightCount), g2 = g1
        _ = try g1.withUnsafeMutableBufferPointer { try model.weightGradient([windows[0]], into: try #require($0.baseAddress), accumulate: false) }
        _ = try g2.withUnsafeMutableBufferPointer { try model.weightGradient([windows[1]], into: try #require($0.baseAddress), accumulate: false) }
        let windowed = try LanguageModelFisher(model: model).diagonal([LanguageModelFisher.Example(sequences: windows, choices: false)])
        #expect(Self.relative(windowed, zip(g1, g2).map { ($0 + $1) * ($0 + $1) }) < 1e-5)
        #expect(Self.relative(windowed, zip(g1, g2).map { $0 * $0 + $1 * $1 }) > 0.01)
    }

    /// The model folder with one weight changed (the test writes the whole safetensors file).
    static func perturbed(_ sandbox: Sandbox, fixture: String = "tiny_llama", name: String, index: Int, by delta: Float, tag: String) throws -> String {
        let source = TrainingFixtures.engineFixtures + "/" + fixture
        let file = try SafetensorsFile(path: source + "/model.safetensors")
        var tensors: [(String, [Int], [Float])] = []
        for n in file.tensorNames {
            var values = try file.floats(n)
            if n == name { values[index] += delta }
            tensors.append((n, try #require(file.layout.tensors.first { $0.name == n }).shape, values))
        }
        let folder = sandbox.path(tag)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: source + "/config.json", toPath: folder + "/config.json")
        var bytes = try #require(SafetensorsHeader.encode(SafetensorsHeader.contiguous(tensors.map { ($0.0, DType.f32, $0.1) }), metadata: []))
        for t in tensors { t.2.withUnsafeBytes { bytes += Array($0) } }
        try Data(bytes).write(to: URL(fileURLWithPath: folder + "/model.safetensors"))
        return folder
    }

    /// Weights to perturb, per fixture: projections, norms, embeddings; for GPT-2 a LayerNorm bias and a Conv1D weight
    /// (its index in the checkpoint's [in, out] layout), for GPT-Neo tensors of its local layer.
    static let perturbedWeights: [String: [String]] = [
        "tiny_llama": ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
                       "model.norm.weight", "model.embed_tokens.weight"],
        "tiny_gpt2": ["transformer.h.0.ln_1.bias", "transformer.h.1.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight",
                      "transformer.h.1.attn.c_proj.bias", "transformer.wpe.weight"],
        "tiny_gptneo": ["transformer.h.1.attn.attention.q_proj.weight", "transformer.h.1.ln_2.bias", "transformer.h.1.mlp.c_proj.weight",
                        "transformer.ln_f.weight", "transformer.wte.weight"],
    ]

    @Test(arguments: ["tiny_llama", "tiny_gpt2", "tiny_gptneo"])
    func finiteDifferencesAgreeOnSingleWeights(fixture: String) throws {
        let sandbox = try Sandbox()
        let model = try Self.model(fixture)
        // Longer than GPT-Neo's window (5), within the tiny models' 32 positions.
        let batch = TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [9, 5, 12])
        var flat = [Float](repeating: 0, count: model.weightCount)
        _ = try flat.withUnsafeMutableBufferPointer { try model.weightGradient(batch, into: try #require($0.baseAddress), accumulate: false) }
        let h: Float = 1e-2
        var worst: Float = 0
        for name in try #require(Self.perturbedWeights[fixture]) {
            let slot = try #require(model.weightTensors.first { $0.name == name })
            let gradient = flat.withUnsafeBufferPointer { model.values(of: slot, from: $0.baseAddress!) }
            let i = try #require(gradient.indices.max { abs(gradient[$0]) < abs(gradient[$1]) })
            func loss(_ delta: Float, _ tag: String) throws -> Double {
                let m = try TrainableModels.make(try ModelLoader.load(path: try Self.perturbed(sandbox, fixture: fixture, name: name, index: i, by: delta,
                                                                                                tag: tag)))
                return try m.loss(batch).sum
            }
            let numeric = Float((try loss(h, "plus-\(worst.hashValue)-\(name)") - loss(-h, "minus-\(worst.hashValue)-\(name)")) / Double(2 * h))
            let error = GradientCheck.relativeError(gradient[i], numeric)
            worst = max(worst, error)
            #expect(error < 0.03, "\(name)[\(i)]: backward \(gradient[i]), finite differences \(numeric)")
            #expect(GradientCheck.relativeError(-gradient[i], numeric) > 0.5)
        }
        print("\(fixture): finite differences on single weights: worst relative error \(worst)")
    }

    @Test(arguments: ["tiny_llama", "tiny_gpt2", "tiny_gptneo"])
    func theTrainingPassIsUnchanged(fixture: String) throws {
        // LoRA gradients with the base gradient asked for too are the same numbers as without (the training path
        // never asks for it, and asking adds nothing to the LoRA factors' gradients).
        let model = try Self.model(fixture)
        let only: Set<String> = fixture == "tiny_gpt2" ? ["c_attn", "c_fc"] : ["q_proj", "v_proj"]
        let parameters = TrainingFixtures.randomParameters(for: model, only: only)
        #expect(!parameters.modules.isEmpty)
        try model.attach(parameters)
        defer { try? model.attach(nil) }
        let batch = TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [9, 5])
        parameters.zeroGradients()
        let plain = try model.accumulateGradients(batch, lossScale: 1, dropoutSeed: 0)
        let a = parameters.modules.map(\.gradientA), b = parameters.modules.map(\.gradientB)
        parameters.zeroGradients()
        var flat = [Float](repeating: 0, count: model.weightCount)
        let withBase = try flat.withUnsafeMutableBufferPointer { try model.weightGradient(batch, into: try #require($0.baseAddress), accumulate: false) }
        #expect(plain == withBase)
        for (m, (ga, gb)) in zip(parameters.modules, zip(a, b)) {
            #expect(Self.relative(m.gradientA, ga) < 1e-6 && Self.relative(m.gradientB, gb) < 1e-6, "\(m.module.name)")
        }
    }

    @Test func refusals() throws {
        let model = try Self.model("tiny_llama")
        #expect(throws: TesseraError.self) { try LanguageModelFisher(model: model).diagonal([]) }
        // A token outside the vocabulary is refused, not read out of bounds.
        let bad = LanguageModelFisher.Example(sequences: [TrainingSequence(text: [1, 2, Int32(model.vocabularySize)])], choices: false)
        #expect(throws: TesseraError.self) { try LanguageModelFisher(model: model).diagonal([bad]) }
        // The same on GPT-2, whose wpe rows are read by position: a sequence longer than the model's 32 positions
        // is refused, not read past the table.
        let gpt2 = try Self.model("tiny_gpt2")
        let long = LanguageModelFisher.Example(sequences: [TrainingSequence(text: (0..<33).map { Int32($0 % 100) })], choices: false)
        #expect(throws: TesseraError.self) { try LanguageModelFisher(model: gpt2).diagonal([long]) }
        let outside = LanguageModelFisher.Example(sequences: [TrainingSequence(text: [1, 2, 100])], choices: false)
        #expect(throws: TesseraError.self) { try LanguageModelFisher(model: gpt2).diagonal([outside]) }
    }
}
