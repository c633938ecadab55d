import Foundation
import TesseraIO

/// The diagonal Fisher information of a linear softmax classifier, logits = W·x + b (W [C, D] row-major, b [C]),
/// over a set of inputs: F = mean over inputs of Σ_y p(y|x) · (∂ log p(y|x)/∂θ)², the exact expectation over the
/// model's own predictive distribution (not the "empirical" Fisher at the observed labels).
///
/// With g_k = δ_ky − p_k, ∂ log p(y|x)/∂W_kj = g_k · x_j and ∂/∂b_k = g_k, and Σ_y p_y (δ_ky − p_k)² = p_k (1 − p_k),
/// so the expectation needs no loop over labels: F_W[k, j] = mean x_j² · p_k (1 − p_k), F_b[k] = mean p_k (1 − p_k).
/// A head with one output (C = 1) is the logistic two-class head `LinearClassificationHead` reads: p = σ(w·x + b), and
/// the same formula holds with p(1 − p).
public enum ClassifierFisher {
    public struct Diagonal: Sendable, Equatable {
        /// [C, D], the layout of the head's `weight`.
        public var weight: [Float]
        /// [C].
        public var bias: [Float]
    }

    public static func diagonal(weight: [Float], bias: [Float], outputs: Int, inputs: [[Float]]) throws -> Diagonal {
        let dim = outputs > 0 ? weight.count / outputs : 0
        guard outputs > 0, dim > 0, weight.count == outputs * dim, bias.count == outputs else {
            throw TesseraError(.shapeMismatch, "Fisher: a head of \(weight.count) weights and \(bias.count) biases does not make [\(outputs), D]",
                               hint: "check the classification head")
        }
        guard !inputs.isEmpty else {
            throw TesseraError(.invalidParameter, "Fisher: no examples to take the expectation over", hint: "give a task file with examples")
        }
        var fw = [Double](repeating: 0, count: weight.count), fb = [Double](repeating: 0, count: outputs)
        var logits = [Double](repeating: 0, count: outputs)
        for x in inputs {
            guard x.count == dim else {
                throw TesseraError(.shapeMismatch, "Fisher: an input of \(x.count) values does not fit a head over \(dim)", hint: "the head was made for another model")
            }
            for k in 0..<outputs {
                var s = Double(bias[k])
                for j in 0..<dim { s += Double(weight[k * dim + j]) * Double(x[j]) }
                logits[k] = s
            }
            var variance = [Double](repeating: 0, count: outputs)
            if outputs == 1 {
                let p = 1 / (1 + (-logits[0]).exp)
                variance[0] = p * (1 - p)
            } else {
                let m = logits.max()!
                let e = logits.map { ($0 - m).exp }
                let z = e.reduce(0, +)
                for k in 0..<outputs { let p = e[k] / z; variance[k] = p * (1 - p) }
            }
            for k in 0..<outputs {
                fb[k] += variance[k]
                for j in 0..<dim { fw[k * dim + j] += variance[k] * Double(x[j]) * Double(x[j]) }
            }
        }
        let n = Double(inputs.count)
        return Diagonal(weight: fw.map { Float($0 / n) }, bias: fb.map { Float($0 / n) })
    }
}

private extension Double {
    var exp: Double { Foundation.exp(self) }
}
