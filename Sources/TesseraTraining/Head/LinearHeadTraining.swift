import Foundation
import TesseraIO

/// Training a linear classification head over fixed sentence embeddings (the encoder stays frozen): logits = W·x + b,
/// W [C, D], b [C], softmax cross-entropy averaged over the examples, full-batch AdamW from zero weights. The loss is
/// convex, so the result does not depend on an initial draw, and one batch of every example makes each run the same
/// to the bit (sums in double, in example order).
public enum LinearHeadTraining {
    public struct Settings: Sendable, Equatable {
        public var steps: Int
        public var learningRate: Double
        public var adamW: AdamWSettings

        public init(steps: Int = 100, learningRate: Double = 0.05, adamW: AdamWSettings = AdamWSettings()) {
            self.steps = steps
            self.learningRate = learningRate
            self.adamW = adamW
        }
    }

    public struct Result: Sendable {
        /// [classes, dim], the layout `LinearClassificationHead` reads.
        public var weight: [Float]
        public var bias: [Float]
        /// The mean cross-entropy before each step, then after the last.
        public var losses: [Double]
        /// Accuracy on the training examples with the final head.
        public var trainingAccuracy: Double
    }

    /// `embeddings[n]` has `dim` values; `labels[n]` is in 0..<classes.
    public static func train(embeddings: [[Float]], labels: [Int], classes: Int, settings: Settings,
                             onStep: ((Int, Double) -> Void)? = nil) throws -> Result {
        guard let dim = embeddings.first?.count, dim > 0, embeddings.count == labels.count else {
            throw TesseraError(.invalidParameter, "training a head needs at least one example with its label", hint: "check the task file")
        }
        guard classes >= 2 else {
            throw TesseraError(.invalidParameter, "a classification head needs at least two classes", hint: "list two labels or more in the task file")
        }
        guard settings.steps > 0, settings.learningRate > 0, settings.learningRate.isFinite else {
            throw TesseraError(.usage, "--steps and --lr must be positive", hint: "e.g. --steps 300 --lr 0.05")
        }
        for (n, x) in embeddings.enumerated() where x.count != dim {
            throw TesseraError(.shapeMismatch, "example \(n) has an embedding of \(x.count) values, the others \(dim)", hint: "internal: embeddings of one encoder")
        }
        for (n, y) in labels.enumerated() where !(0..<classes).contains(y) {
            throw TesseraError(.invalidParameter, "example \(n) has label \(y), outside the \(classes) classes", hint: "check the task file")
        }
        var weight = [Float](repeating: 0, count: classes * dim), bias = [Float](repeating: 0, count: classes)
        var weightMoments = AdamWMoments(count: weight.count), biasMoments = AdamWMoments(count: bias.count)
        var losses: [Double] = []
        let n = Double(embeddings.count)

        /// Mean loss, gradients (mean over examples) and the number classified right.
        func evaluate(_ w: [Float], _ b: [Float]) -> (loss: Double, gw: [Float], gb: [Float], correct: Int) {
            var gw = [Double](repeating: 0, count: w.count), gb = [Double](repeating: 0, count: b.count)
            var loss = 0.0, correct = 0
            var logits = [Double](repeating: 0, count: classes)
            for (x, y) in zip(embeddings, labels) {
                for k in 0..<classes {
                    var s = Double(b[k])
                    for j in 0..<dim { s += Double(w[k * dim + j]) * Double(x[j]) }
                    logits[k] = s
                }
                let m = logits.max()!
                let z = logits.reduce(0) { $0 + exp($1 - m) }
                loss += (m + log(z)) - logits[y]
                if logits.firstIndex(of: m) == y { correct += 1 }
                for k in 0..<classes {
                    let g = exp(logits[k] - m) / z - (k == y ? 1 : 0)
                    gb[k] += g
                    for j in 0..<dim { gw[k * dim + j] += g * Double(x[j]) }
                }
            }
            return (loss / n, gw.map { Float($0 / n) }, gb.map { Float($0 / n) }, correct)
        }

        for step in 1...settings.steps {
            let (loss, gw, gb, _) = evaluate(weight, bias)
            guard loss.isFinite else {
                throw TesseraError(.invalidParameter, "the head's loss is not finite at step \(step)", hint: "lower --lr")
            }
            losses.append(loss)
            onStep?(step, loss)
            AdamW.update(&weight, gradients: gw, moments: &weightMoments, step: step, lr: settings.learningRate, settings: settings.adamW)
            AdamW.update(&bias, gradients: gb, moments: &biasMoments, step: step, lr: settings.learningRate, settings: settings.adamW)
        }
        let final = evaluate(weight, bias)
        losses.append(final.loss)
        return Result(weight: weight, bias: bias, losses: losses, trainingAccuracy: Double(final.correct) / n)
    }
}
