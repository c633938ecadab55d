import Foundation
import TesseraTraining

/// A test double of a trainable model for the trainer's own tests (not the real path): a bigram model whose logits
/// for the next token are W·x + s·B·A·(mask ⊙ x), x the current token's frozen embedding, with one adaptable
/// layer and its gradients written out analytically (softmax cross-entropy).
final class BigramTestModel: TrainableLanguageModel {
    let vocabularySize: Int
    let dimension: Int
    let maxSequenceLength = 64
    let embedding: [Float]  // [V, D]
    let weight: [Float]     // [V, D]
    var attached: LoRAParameters?
    static let moduleName = "lm.proj"

    init(vocabulary: Int = 11, dimension: Int = 6, seed: UInt64 = 7) {
        vocabularySize = vocabulary
        self.dimension = dimension
        var rng = SplitMix64(seed: seed)
        embedding = (0..<(vocabulary * dimension)).map { _ in rng.nextUnitFloat() * 2 - 1 }
        weight = (0..<(vocabulary * dimension)).map { _ in (rng.nextUnitFloat() * 2 - 1) * 0.3 }
    }

    var adaptableModules: [AdaptableModule] { [AdaptableModule(name: Self.moduleName, outputs: vocabularySize, inputs: dimension)] }

    func attach(_ parameters: LoRAParameters?) throws {
        if let parameters {
            for m in parameters.modules where m.module != adaptableModules[0] { throw TrainerTestError.unknownModule(m.module.name) }
        }
        attached = parameters
    }

    func accumulateGradients(_ batch: [TrainingSequence], lossScale: Float, dropoutSeed: UInt64) throws -> LossSum {
        try run(batch, gradients: lossScale, dropoutSeed: dropoutSeed)
    }

    func loss(_ batch: [TrainingSequence]) throws -> LossSum { try run(batch, gradients: nil, dropoutSeed: 0) }

    private func run(_ batch: [TrainingSequence], gradients scale: Float?, dropoutSeed: UInt64) throws -> LossSum {
        let V = vocabularySize, D = dimension
        let lora = attached?.modules.first
        let p = scale != nil ? (attached?.dropout ?? 0) : 0
        var rng = SplitMix64(seed: dropoutSeed)
        var total = LossSum()
        for sequence in batch {
            for (t, token) in sequence.tokens.enumerated() {
                let target = sequence.targets[t]
                let x = Array(embedding[(Int(token) * D)..<(Int(token) * D + D)])
                var logits = (0..<V).map { v in (0..<D).reduce(Float(0)) { $0 + weight[v * D + $1] * x[$1] } }
                var dropped = x
                if p > 0 { for i in 0..<D { dropped[i] = rng.nextUnitFloat() < p ? 0 : x[i] / (1 - p) } }
                var h: [Float] = []
                if let lora {
                    let r = lora.rank
                    h = (0..<r).map { k in (0..<D).reduce(Float(0)) { $0 + lora.a[k * D + $1] * dropped[$1] } }
                    for v in 0..<V { for k in 0..<r { logits[v] += lora.scaling * lora.b[v * r + k] * h[k] } }
                }
                guard target != TrainingSequence.ignored else { continue }
                let m = logits.max() ?? 0
                let exps = logits.map { Double(exp($0 - m)) }
                let z = exps.reduce(0, +)
                total = total + LossSum(sum: log(z) - Double(logits[Int(target)] - m), count: 1)
                guard let scale, let lora else { continue }
                let r = lora.rank
                var d = exps.map { Float($0 / z) }
                d[Int(target)] -= 1
                var gh = [Float](repeating: 0, count: r)
                for v in 0..<V {
                    for k in 0..<r {
                        lora.gradientB[v * r + k] += scale * lora.scaling * d[v] * h[k]
                        gh[k] += lora.scaling * lora.b[v * r + k] * d[v]
                    }
                }
                for k in 0..<r { for i in 0..<D { lora.gradientA[k * D + i] += scale * gh[k] * dropped[i] } }
            }
        }
        return total
    }
}

enum TrainerTestError: Error { case unknownModule(String) }

/// Sequences a bigram model can learn: token t is followed by (3t + 1) mod V.
func bigramData(count: Int, length: Int = 6, vocabulary: Int = 11, seed: UInt64 = 3) -> TrainingDataSet {
    var rng = SplitMix64(seed: seed)
    let sequences = (0..<count).map { _ -> TrainingSequence in
        var tokens = [Int32(rng.boundedDraw(UInt64(vocabulary)))]
        while tokens.count < length { tokens.append(Int32((3 * Int(tokens.last!) + 1) % vocabulary)) }
        return TrainingSequence(text: tokens)
    }
    return TrainingDataSet(sequences: sequences)
}
