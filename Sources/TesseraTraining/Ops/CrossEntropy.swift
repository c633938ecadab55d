import Foundation
import TesseraMath

/// Softmax cross-entropy through a frozen output head, over the counted positions only (ignored targets never get
/// logits): logits = x · Wᵀ in chunks of rows, loss = logsumexp(logits) − logits[target], and
/// dx = lossScale · (softmax(logits) − onehot(target)) · W, and, when asked, the head's own gradient
/// dW += lossScale · (softmax − onehot)ᵀ · x. Chunks bound the logits buffer (rows × vocabulary).
enum SoftmaxCrossEntropy {
    static let chunkRows = 256
    /// At most this many logits at once (64 MB), whatever the vocabulary.
    static let chunkLogits = 1 << 24

    /// Σ of the rows' cross-entropies (nats); writes dx [rows, dim] when given, adds to dHead [vocabulary, dim] when given.
    static func lossAndGradient(_ x: UnsafePointer<Float>, rows: Int, dim: Int, head: UnsafePointer<Float>, vocabulary: Int, targets: [Int],
                                lossScale: Float, dx: UnsafeMutablePointer<Float>?, dHead: UnsafeMutablePointer<Float>? = nil) -> Double {
        guard rows > 0 else { return 0 }
        let chunk = max(1, min(rows, chunkRows, chunkLogits / max(1, vocabulary)))
        let logits = TrainingBuffer(chunk * vocabulary)
        var total = 0.0
        var losses = [Double](repeating: 0, count: chunk)
        var r0 = 0
        while r0 < rows {
            let n = min(chunk, rows - r0)
            Linalg.sgemmAcrossCores(transposeB: true, m: n, n: vocabulary, k: dim, x + r0 * dim, lda: dim, head, ldb: dim, logits.p, ldc: vocabulary)
            losses.withUnsafeMutableBufferPointer { lossBuffer in
                guard let out = lossBuffer.baseAddress else { return }
                RowParallel.forRows(n, minimum: 2) { range in
                    for i in range {
                        let row = logits.p + i * vocabulary, target = targets[r0 + i]
                        var maxValue = -Float.infinity
                        for j in 0..<vocabulary where row[j] > maxValue { maxValue = row[j] }
                        let targetLogit = row[target]
                        for j in 0..<vocabulary { row[j] -= maxValue }
                        FastMath.expInPlace(row, count: vocabulary)
                        var sum = 0.0
                        for j in 0..<vocabulary { sum += Double(row[j]) }
                        out[i] = log(sum) + Double(maxValue) - Double(targetLogit)
                        let k = lossScale / Float(sum)
                        for j in 0..<vocabulary { row[j] *= k }
                        row[target] -= lossScale
                    }
                }
            }
            for i in 0..<n { total += losses[i] }
            if let dx {
                Linalg.sgemmAcrossCores(m: n, n: dim, k: vocabulary, logits.p, lda: vocabulary, head, ldb: dim, dx + r0 * dim, ldc: dim)
            }
            if let dHead {
                Linalg.sgemmAcrossCores(transposeA: true, m: vocabulary, n: dim, k: n, logits.p, lda: vocabulary, x + r0 * dim, ldb: dim, beta: 1, dHead, ldc: dim)
            }
            r0 += n
        }
        return total
    }
}
