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

    /// C[m×n] = alpha · A[m×k] · B[k×n] + beta · C.
    @inline(__always)
    public static func matmul(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0
    ) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(k), b, Int32(n), beta, c, Int32(n))
    }

    /// Sets the number of OpenBLAS threads (benchmarks pin this to compare with PyTorch at equal threads).
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }
}
