import TesseraMath

/// Rotary position embedding of Q and K, in both layouts the engine reads: split halves (Hugging Face,
/// `rotate_half`) and adjacent pairs (GGUF, whose converter permuted the Q/K rows). The rotation is orthogonal, so
/// its backward is the rotation by the opposite angle.
enum RoPEOp {
    static func forward(_ x: UnsafeMutablePointer<Float>, ld: Int, rows: Int, heads: Int, headDim: Int, positions: UnsafePointer<Int>,
                        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, layout: VectorKernels.RoPELayout) {
        VectorKernels.applyRoPE(x, ld: ld, tokens: rows, heads: heads, headDim: headDim, positions: positions, cos: cos, sin: sin, layout: layout)
    }

    /// Turns the gradient with respect to the rotated values into the gradient with respect to the unrotated ones,
    /// in place.
    static func backward(_ dx: UnsafeMutablePointer<Float>, ld: Int, rows: Int, heads: Int, headDim: Int, positions: UnsafePointer<Int>,
                         cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, layout: VectorKernels.RoPELayout) {
        let half = headDim / 2
        for t in 0..<rows {
            let c = cos + positions[t] * half, s = sin + positions[t] * half
            for h in 0..<heads {
                let v = dx + t * ld + h * headDim
                switch layout {
                case .adjacentPairs:
                    for i in 0..<half {
                        let a = v[2 * i], b = v[2 * i + 1]
                        v[2 * i] = a * c[i] + b * s[i]
                        v[2 * i + 1] = b * c[i] - a * s[i]
                    }
                case .splitHalves:
                    for i in 0..<half {
                        let a = v[i], b = v[i + half]
                        v[i] = a * c[i] + b * s[i]
                        v[i + half] = b * c[i] - a * s[i]
                    }
                }
            }
        }
    }
}
