import Foundation
import COpenBLAS

/// Matrix products through OpenBLAS sgemm. Row-major throughout, as checkpoints store weights.
public enum Linalg {
    /// C[m×n] = alpha · A[m×k] · B[n×k]ᵀ + beta · C. This is the shape of a linear layer: x · Wᵀ with W [out, in].
    @inline(__always)
    public static func matmulTransposedB(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0
    ) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(k), b, Int32(k), beta, c, Int32(n))
    }

    /// y[rows] = alpha · A[rows×cols] · x + beta · y (row-major A): a linear layer applied to one token.
    @inline(__always)
    public static func matvec(
        _ a: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
        rows: Int, cols: Int, lda: Int? = nil, alpha: Float = 1, beta: Float = 0
    ) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), alpha, a, Int32(lda ?? cols), x, 1, beta, y, 1)
    }

    /// The number of OpenBLAS threads in use.
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// Sets the number of OpenBLAS threads (benchmarks pin this to compare with PyTorch at equal threads).
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }

    /// What BLAS users expect: OPENBLAS_NUM_THREADS when it is set, else one thread per core.
    public static var defaultThreads: Int {
        if let text = ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"], let n = Int(text), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }
}
