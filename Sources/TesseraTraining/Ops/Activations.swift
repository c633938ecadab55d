import Foundation
import TesseraMath

/// SwiGLU (Llama's MLP) on a fused [rows, 2·ffn] buffer laid out (gate | up): h = silu(gate) · up.
enum SwiGLUOp {
    static func forward(_ gateUp: UnsafePointer<Float>, _ h: UnsafeMutablePointer<Float>, rows: Int, ffn: Int) {
        VectorKernels.swiGLU(gateUp, h, tokens: rows, ffn: ffn)
    }

    /// d gate = dh · up · σ(g)(1 + g(1 − σ(g))), d up = dh · silu(g), written into `dGateUp` [rows, 2·ffn].
    static func backward(_ gateUp: UnsafePointer<Float>, dh: UnsafePointer<Float>, dGateUp: UnsafeMutablePointer<Float>, rows: Int, ffn: Int) {
        RowParallel.forRows(rows, minimum: 16) { range in
            for r in range {
                let g = gateUp + r * 2 * ffn, u = g + ffn, d = dh + r * ffn
                let dg = dGateUp + r * 2 * ffn, du = dg + ffn
                for j in 0..<ffn {
                    let sigma = 1 / (1 + expf(-g[j]))
                    let silu = g[j] * sigma
                    du[j] = d[j] * silu
                    dg[j] = d[j] * u[j] * sigma * (1 + g[j] * (1 - sigma))
                }
            }
        }
    }
}

/// GELU, out of place: the tanh form (GPT-2, GPT-Neo: "gelu_new") and the erf form (BERT's "gelu").
enum GELUOp {
    static func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, _ kind: VectorKernels.GELU) {
        y.update(from: x, count: count)
        VectorKernels.gelu(y, count: count, kind)
    }

    /// dx = dy · gelu'(x).
    static func backward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int, _ kind: VectorKernels.GELU) {
        RowParallel.forRows(count, minimum: 8192) { range in
            switch kind {
            case .tanh:
                let c: Float = 0.7978845608028654  // √(2/π)
                for k in range {
                    let v = x[k]
                    let t = tanhf(c * (v + 0.044715 * v * v * v))
                    dx[k] = dy[k] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * 0.044715 * v * v))
                }
            case .erf:
                let invSqrt2: Float = 0.70710678118654752, invSqrt2Pi: Float = 0.3989422804014327
                for k in range {
                    let v = x[k]
                    dx[k] = dy[k] * (0.5 * (1 + erff(v * invSqrt2)) + v * expf(-0.5 * v * v) * invSqrt2Pi)
                }
            }
        }
    }
}
