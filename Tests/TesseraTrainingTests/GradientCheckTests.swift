import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO
import TesseraTestSupport
import TesseraTraining

/// Central finite differences of the loss (computed in float32, summed in double) against the backward pass's
/// gradients, on a handful of A and B entries of every kind of module of the tiny models. The entries checked are
/// the ones with the largest gradients, where float32 differences are meaningful; a relative error under 3% is
/// required, which a gradient of the wrong sign or a factor of two off could not meet (checked below on a
/// deliberately negated gradient).
struct GradientCheck {
    let model: any TrainableLanguageModel
    let batch: [TrainingSequence]
    let step: Float = 1e-2

    /// (analytic, numeric) for the `count` largest entries of each module's ∂A and ∂B.
    func pairs(_ parameters: LoRAParameters, count: Int = 2) throws -> [(String, Float, Float)] {
        try model.attach(parameters)
        parameters.zeroGradients()
        _ = try model.accumulateGradients(batch, lossScale: 1, dropoutSeed: 0)
        var out: [(String, Float, Float)] = []
        for m in parameters.modules {
            for factor in ["A", "B"] {
                let gradient = factor == "A" ? m.gradientA : m.gradientB
                let top = gradient.indices.sorted { abs(gradient[$0]) > abs(gradient[$1]) }.prefix(count)
                for i in top {
                    let saved = factor == "A" ? m.a[i] : m.b[i]
                    func loss(_ v: Float) throws -> Double {
                        if factor == "A" { m.a[i] = v } else { m.b[i] = v }
                        return try model.loss(batch).sum
                    }
                    let numeric = (try loss(saved + step) - loss(saved - step)) / Double(2 * step)
                    if factor == "A" { m.a[i] = saved } else { m.b[i] = saved }
                    out.append(("\(m.module.name).\(factor)[\(i)]", gradient[i], Float(numeric)))
                }
            }
        }
        return out
    }

    static func relativeError(_ analytic: Float, _ numeric: Float) -> Float {
        abs(analytic - numeric) / max(abs(numeric), 1e-3)
    }
}

@Suite struct GradientCheckTests {
    static let models = ["tiny_llama", "tiny_llama.gguf", "tiny_gpt2", "tiny_gptneo"]

    @Test(arguments: models)
    func finiteDifferencesAgree(fixture: String) throws {
        let engine = try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/" + fixture)
        let model = try TrainableModels.make(engine)
        let check = GradientCheck(model: model, batch: TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [9, 5, 12]))
        let parameters = TrainingFixtures.randomParameters(for: model)
        let pairs = try check.pairs(parameters)
        #expect(pairs.count == parameters.modules.count * 4)
        var worst: Float = 0
        for (name, analytic, numeric) in pairs {
            let error = GradientCheck.relativeError(analytic, numeric)
            worst = max(worst, error)
            #expect(error < 0.03, "\(fixture) \(name): backward \(analytic), finite differences \(numeric)")
            // The check can fail: the negated gradient is far off.
            #expect(GradientCheck.relativeError(-analytic, numeric) > 0.5)
        }
        print("\(fixture): worst relative error \(worst) over \(pairs.count) entries")
    }
}

/// The training forward pass against PEFT's own logits (the engine's PEFT fixtures: adapters PEFT saved on the tiny
/// Llama, with rank and alpha patterns, and the tiny GPT-2, Conv1D): the loss of the next-token targets computed from
/// PEFT's logits equals the trainer's loss within 1e-5 relative, on the Hugging Face and the GGUF Llama (whose q/k
/// rows are permuted for RoPE, so B's rows must be too).
@Suite struct ForwardAgreementTests {
    @Test(arguments: ["tiny_llama", "tiny_llama.gguf", "tiny_gpt2"])
    func lossEqualsPEFTLogits(fixture: String) throws {
        let name = fixture.replacingOccurrences(of: ".gguf", with: "")
        let peft = TrainingFixtures.engineFixtures + "/peft_lora"
        let expected = try SafetensorsFile(path: peft + "/\(name)_peft_logits.safetensors")
        let ids = try expected.floats("input_ids").map { Int32($0) }
        let logits = try expected.floats("logits").map(Double.init)
        let vocabulary = logits.count / ids.count
        var want = 0.0
        for t in 0..<(ids.count - 1) {
            let row = logits[(t * vocabulary)..<((t + 1) * vocabulary)]
            let m = row.max() ?? 0
            want += m + log(row.reduce(0) { $0 + exp($1 - m) }) - row[t * vocabulary + Int(ids[t + 1])]
        }
        let model = try TrainableModels.make(try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/" + fixture))
        try model.attach(try TrainingFixtures.parameters(adapterFolder: peft + "/" + name))
        let got = try model.loss([TrainingSequence(text: ids)])
        #expect(got.count == ids.count - 1)
        #expect(abs(got.sum - want) / want < 1e-5, "\(fixture): loss \(got.sum), from PEFT's logits \(want)")
        try model.attach(nil)
        let base = try model.loss([TrainingSequence(text: ids)])
        #expect(abs(base.sum - want) / want > 1e-3, "the adapter changes the loss")
    }
}

/// The same finite-difference check on the BERT classifier (the torchref fixture's tiny BertForSequenceClassification),
/// over LoRA factors of every module kind and the head's weight and bias, with a softmax head (2 classes) and with a
/// logistic one (1 output).
@Suite struct BERTGradientCheckTests {
    @Test(arguments: [2, 1])
    func finiteDifferencesAgree(classes: Int) throws {
        let model = try TrainableModels.makeClassifier(try BERTModel.load(directory: TrainingFixtures.trainingFixtures + "/bert/model"))
        let h = model.pooledSize
        let head = LinearHeadParameters(outputs: classes, inputs: h, weight: (0..<(classes * h)).map { Float(($0 * 37) % 11) / 5 - 1 },
                                        bias: (0..<classes).map { Float($0) * 0.3 - 0.1 })
        try model.attachHead(head)
        let parameters = LoRAParameters(modules: model.adaptableModules.enumerated().map { i, m in
            LoRAModuleParameters(module: m, rank: 2, scaling: 2, a: (0..<(2 * m.inputs)).map { Float(($0 * 13 + i) % 17) / 17 - 0.5 },
                                 b: (0..<(m.outputs * 2)).map { Float(($0 * 7 + i) % 19) / 19 - 0.5 })
        })
        try model.attach(parameters)
        let batch = [ClassificationExample(tokens: [5, 9, 13, 2, 77, 41], label: 1), ClassificationExample(tokens: [8, 3, 60], label: 0),
                     ClassificationExample(tokens: [31, 12, 99, 4], label: classes == 1 ? 1 : 1)]
        parameters.zeroGradients()
        head.zeroGradients()
        _ = try model.accumulateGradients(batch, lossScale: 1, dropoutSeed: 0)
        let step: Float = 1e-2
        var checked = 0
        func check(_ label: String, _ analytic: Float, _ set: (Float) -> Void, _ value: Float) throws {
            set(value + step)
            let plus = try model.loss(batch).sum
            set(value - step)
            let minus = try model.loss(batch).sum
            set(value)
            let numeric = Float((plus - minus) / Double(2 * step))
            #expect(GradientCheck.relativeError(analytic, numeric) < 0.03, "\(label): backward \(analytic), finite differences \(numeric)")
            #expect(GradientCheck.relativeError(-analytic, numeric) > 0.5, "\(label): the check would catch a sign error")
            checked += 1
        }
        for m in parameters.modules {
            let i = m.gradientA.indices.max { abs(m.gradientA[$0]) < abs(m.gradientA[$1]) } ?? 0
            try check("\(m.module.name).A[\(i)]", m.gradientA[i], { m.a[i] = $0 }, m.a[i])
            let j = m.gradientB.indices.max { abs(m.gradientB[$0]) < abs(m.gradientB[$1]) } ?? 0
            try check("\(m.module.name).B[\(j)]", m.gradientB[j], { m.b[j] = $0 }, m.b[j])
        }
        let w = head.gradientWeight.indices.max { abs(head.gradientWeight[$0]) < abs(head.gradientWeight[$1]) } ?? 0
        try check("head.weight[\(w)]", head.gradientWeight[w], { head.weight[w] = $0 }, head.weight[w])
        try check("head.bias[0]", head.gradientBias[0], { head.bias[0] = $0 }, head.bias[0])
        #expect(checked == 2 * parameters.modules.count + 2)
    }

    @Test func badExamplesAndHeadsAreRefused() throws {
        let model = try TrainableModels.makeClassifier(try BERTModel.load(directory: TrainingFixtures.trainingFixtures + "/bert/model"))
        let h = model.pooledSize
        #expect(throws: TesseraError.self) { _ = try model.loss([ClassificationExample(tokens: [1, 2], label: 0)]) }  // no head yet
        #expect(throws: TesseraError.self) {
            try model.attachHead(LinearHeadParameters(outputs: 2, inputs: h + 1, weight: .init(repeating: 0, count: 2 * h + 2), bias: [0, 0]))
        }
        try model.attachHead(LinearHeadParameters(outputs: 2, inputs: h, weight: .init(repeating: 0.1, count: 2 * h), bias: [0, 0]))
        for bad in [[ClassificationExample(tokens: [1, 2], label: 2)], [ClassificationExample(tokens: [1, 2], label: -1)],
                    [ClassificationExample(tokens: [1, Int32(model.vocabularySize)], label: 0)], [ClassificationExample(tokens: [], label: 0)],
                    [ClassificationExample(tokens: [Int32](repeating: 1, count: model.maxSequenceLength + 1), label: 0)]] {
            #expect(throws: TesseraError.self) { _ = try model.accumulateGradients(bad, lossScale: 1, dropoutSeed: 0) }
        }
        #expect(throws: TesseraError.self) { _ = try TrainableModels.makeClassifier(NSObject()) }
    }
}
