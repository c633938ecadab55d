import Foundation
import TesseraMath

/// RMSNorm (Llama): y = x · r · w with r = 1/√(mean(x²) + eps), per row of [rows, dim].
enum RMSNormOp {
    static func forward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float) {
        RowParallel.forRows(rows) { range in
            VectorKernels.rmsNorm(x + range.lowerBound * dim, weight, y + range.lowerBound * dim, rows: range.count, dim: dim, eps: eps)
        }
    }

    /// dx (+)= r · (w ⊙ dy) − x · r³ / dim · Σ(w ⊙ dy ⊙ x), per row.
    static func backward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                         rows: Int, dim: Int, eps: Float, accumulate: Bool) {
        RowParallel.forRows(rows) { range in
            for r in range {
                let xr = x + r * dim, g = dy + r * dim, out = dx + r * dim
                var squares: Float = 0, dot: Float = 0
                for j in 0..<dim {
                    squares += xr[j] * xr[j]
                    dot += weight[j] * g[j] * xr[j]
                }
                let inv = 1 / (squares / Float(dim) + eps).squareRoot()
                let k = dot * inv * inv * inv / Float(dim)
                if accumulate {
                    for j in 0..<dim { out[j] += inv * weight[j] * g[j] - xr[j] * k }
                } else {
                    for j in 0..<dim { out[j] = inv * weight[j] * g[j] - xr[j] * k }
                }
            }
        }
    }

    /// dw += Σ_rows dy ⊙ x · r: the gradient of the norm's own weight (rows in order, one pass: dim is small).
    static func weightGradient(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, into dw: UnsafeMutablePointer<Float>, rows: Int, dim: Int,
                               eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, g = dy + r * dim
            var squares: Float = 0
            for j in 0..<dim { squares += xr[j] * xr[j] }
            let inv = 1 / (squares / Float(dim) + eps).squareRoot()
            for j in 0..<dim { dw[j] += g[j] * xr[j] * inv }
        }
    }
}

/// LayerNorm (GPT-2, GPT-Neo, BERT): y = x̂ · w + b with x̂ = (x − mean) · r, r = 1/√(var + eps) (biased variance).
enum LayerNormOp {
    static func forward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                        rows: Int, dim: Int, eps: Float) {
        RowParallel.forRows(rows) { range in
            VectorKernels.layerNorm(x + range.lowerBound * dim, weight, bias, y + range.lowerBound * dim, rows: range.count, dim: dim, eps: eps)
        }
    }

    /// dx (+)= r · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)) with ĝ = w ⊙ dy, per row.
    static func backward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                         rows: Int, dim: Int, eps: Float, accumulate: Bool) {
        RowParallel.forRows(rows) { range in
            for r in range {
                let xr = x + r * dim, g = dy + r * dim, out = dx + r * dim
                let (mean, inv) = VectorKernels.layerNormStatistics(xr, dim: dim, eps: eps)
                var gMean: Float = 0, gxMean: Float = 0
                for j in 0..<dim {
                    let gh = weight[j] * g[j]
                    gMean += gh
                    gxMean += gh * (xr[j] - mean) * inv
                }
                gMean /= Float(dim)
                gxMean /= Float(dim)
                for j in 0..<dim {
                    let v = inv * (weight[j] * g[j] - gMean - (xr[j] - mean) * inv * gxMean)
                    if accumulate { out[j] += v } else { out[j] = v }
                }
            }
        }
    }

    /// dw += Σ_rows dy ⊙ x̂ and db += Σ_rows dy: the gradients of the norm's own weight and bias (rows in order, one
    /// pass: dim is small).
    static func weightGradient(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, weight dw: UnsafeMutablePointer<Float>,
                               bias db: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, g = dy + r * dim
            let (mean, inv) = VectorKernels.layerNormStatistics(xr, dim: dim, eps: eps)
            for j in 0..<dim {
                dw[j] += g[j] * (xr[j] - mean) * inv
                db[j] += g[j]
            }
        }
    }
}
