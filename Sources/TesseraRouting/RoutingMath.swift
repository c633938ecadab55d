import Foundation

/// The small vector operations routers run per token.
enum RoutingMath {
    /// Σ a[i]·b[i] in eight float32 lanes.
    @inline(__always)
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var lanes = SIMD8<Float>()
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        var i = 0
        while i + 8 <= count {
            lanes += ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        var sum = lanes.sum()
        while i < count {
            sum += a[i] * b[i]
            i += 1
        }
        return sum
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
