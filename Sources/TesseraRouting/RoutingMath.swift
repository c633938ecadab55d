import Foundation
import TesseraMath

/// The small vector operations routers run per token.
enum RoutingMath {
    /// out[j] = x · vectors[experts[j]] (rows of `inputs` floats). A module's experts are usually a run of
    /// consecutive library indices: their rows are then read together (`VectorKernels.dotRows`).
    static func dots(_ x: UnsafePointer<Float>, vectors: UnsafePointer<Float>, inputs: Int, experts: [Int], into out: UnsafeMutablePointer<Float>) {
        guard let first = experts.first, let last = experts.last else { return }
        if last - first + 1 == experts.count {
            VectorKernels.dotRows(vectors + first * inputs, lda: inputs, rows: experts.count, x, count: inputs, into: out)
        } else {
            for (j, expert) in experts.enumerated() { out[j] = VectorKernels.dot(x, vectors + expert * inputs, count: inputs) }
        }
    }

    /// LayerNorm without affine parameters: (v − mean) / √(var + eps), the biased variance (PyTorch's).
    static func layerNorm(_ v: UnsafePointer<Float>, count: Int, eps: Float = 1e-5, into out: UnsafeMutablePointer<Float>) {
        guard count > 0 else { return }
        var mean: Double = 0
        for i in 0..<count { mean += Double(v[i]) }
        mean /= Double(count)
        var variance: Double = 0
        for i in 0..<count { let d = Double(v[i]) - mean; variance += d * d }
        variance /= Double(count)
        let scale = 1 / (variance + Double(eps)).squareRoot()
        for i in 0..<count { out[i] = Float((Double(v[i]) - mean) * scale) }
    }

    static func layerNorm(_ v: [Float], eps: Float = 1e-5) -> [Float] {
        var out = [Float](repeating: 0, count: v.count)
        v.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                if let s = src.baseAddress, let d = dst.baseAddress { layerNorm(s, count: v.count, eps: eps, into: d) }
            }
        }
        return out
    }
}
