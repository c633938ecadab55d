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
    public static func setThreads(_ n: Int) {
        _ = quietIdleWorkers
        openblas_set_num_threads(Int32(n))
    }

    /// OpenBLAS's idle workers spin, calling sched_yield, for about 2^28 cycles after each product before they sleep.
    /// The engine's own parallel loops (attention, activations) run between products, and when there are as many
    /// threads as cores the spinning workers take cores from them: on SmolLM2's 512-token prefill, attention took
    /// 0.11 s beside spinning workers and 0.075 s without. OpenBLAS reads the spin time (OPENBLAS_THREAD_TIMEOUT, a
    /// power of two from 4 to 30) only when it loads, so unless the user set it, it is set to the minimum here and the
    /// worker pool is restarted (OpenBLAS starts it again on the next product). Waking a sleeping worker costs
    /// microseconds, a few hundred times per forward pass. Both entry points are looked up, so another BLAS build
    /// without them is left as it is.
    private static let quietIdleWorkers: Void = {
        guard ProcessInfo.processInfo.environment["OPENBLAS_THREAD_TIMEOUT"] == nil,
              let library = dlopen(nil, RTLD_NOW),
              let readEnvironment = dlsym(library, "openblas_read_env"),
              let shutdownWorkers = dlsym(library, "blas_thread_shutdown_") else { return }
        setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0)
        unsafeBitCast(readEnvironment, to: (@convention(c) () -> Void).self)()
        _ = unsafeBitCast(shutdownWorkers, to: (@convention(c) () -> Int32).self)()
    }()

    /// What BLAS users expect: OPENBLAS_NUM_THREADS when it is set, else one thread per core.
    public static var defaultThreads: Int {
        if let text = ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"], let n = Int(text), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }
}
