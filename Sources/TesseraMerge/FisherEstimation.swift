import Foundation
import TesseraCore
import TesseraIO

/// Diagonal Fisher information, the input of `fisher` merging. The exact-expectation form for a softmax classifier
/// p(y|x) = softmax(x·W + b) (Matena & Raffel's "expected" Fisher): F = mean_n Σ_y p(y|x_n) (∂ log p(y|x_n)/∂θ)²,
/// with ∂ log p_y/∂z = e_y − p, so ∂/∂W[i, c] = x_i (e_y − p)_c and ∂/∂b[c] = (e_y − p)_c. Computed in float64.
public enum DiagonalFisher {
    /// W [inputs, classes], b [classes], X [examples, inputs]; returns F_W [inputs, classes] and F_b [classes].
    public static func softmaxClassifier(w: [Float], b: [Float], x: [Float], inputs: Int, classes: Int) throws -> (w: [Float], b: [Float]) {
        guard w.count == inputs * classes, b.count == classes, inputs > 0, classes > 0, x.count % inputs == 0, !x.isEmpty else {
            throw TesseraError(.shapeMismatch, "softmax Fisher: W has \(w.count) values, b \(b.count), X \(x.count) for \(inputs) inputs and \(classes) classes",
                               hint: "W is [inputs, classes], b [classes], X [examples, inputs]")
        }
        let examples = x.count / inputs
        var fw = [Double](repeating: 0, count: w.count)
        var fb = [Double](repeating: 0, count: classes)
        for e in 0..<examples {
            var z = [Double](repeating: 0, count: classes)
            for c in 0..<classes {
                var s = Double(b[c])
                for i in 0..<inputs { s += Double(x[e * inputs + i]) * Double(w[i * classes + c]) }
                z[c] = s
            }
            let zmax = z.max()!
            var p = z.map { exp($0 - zmax) }
            let total = p.reduce(0, +)
            for c in 0..<classes { p[c] /= total }
            for y in 0..<classes {
                for c in 0..<classes {
                    let g = (c == y ? 1 : 0) - p[c]
                    fb[c] += p[y] * g * g
                    for i in 0..<inputs {
                        let xi = Double(x[e * inputs + i])
                        fw[i * classes + c] += p[y] * xi * xi * g * g
                    }
                }
            }
        }
        let scale = 1 / Double(examples)
        return (fw.map { Float($0 * scale) }, fb.map { Float($0 * scale) })
    }
}
