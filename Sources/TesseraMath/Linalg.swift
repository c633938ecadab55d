import CKernels
import COpenBLAS
import Foundation

/// Every BLAS and LAPACK call of Tessera goes through here (OpenBLAS with LAPACKE). Row-major throughout, as
/// checkpoints store weights. Callers pass sizes they have validated; nothing here reads input bytes.
public enum Linalg {
    /// C[m×n] = alpha · op(A) · op(B) + beta · C with explicit leading dimensions (op = transpose when asked).
    @inline(__always)
    public static func sgemm(transposeA: Bool = false, transposeB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
                             _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
                             _ c: UnsafeMutablePointer<Float>, ldc: Int) {
        _ = configured
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// The same product as `sgemm`, split into one single-threaded OpenBLAS call per core on Tessera's own pool
    /// (`Parallel.forEach`), each computing a band of C's columns (or rows, when C is narrow). For training's large
    /// products at batches of a few hundred rows: OpenBLAS's own threads wait for each other between packing phases
    /// with `sched_yield`, which took 12–15% of a training step's CPU time (a quarter of `train gates`'). OpenBLAS picks
    /// its blocking from each call's shape, so a band's sums may round differently from the whole product's (float32
    /// rounding, tested); products under 4M multiply-adds go to `sgemm` as they are.
    public static func sgemmAcrossCores(transposeA: Bool = false, transposeB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
                                        _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
                                        _ c: UnsafeMutablePointer<Float>, ldc: Int) {
        let parts = threads
        guard parts > 1, m > 0, n > 0, k > 0, Double(m) * Double(n) * Double(k) >= 4_194_304, max(m, n) >= 64 * parts else {
            sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a, lda: lda, b, ldb: ldb, beta: beta, c, ldc: ldc)
            return
        }
        setThreads(1)
        defer { setThreads(parts) }
        let alongColumns = n >= m
        let total = alongColumns ? n : m
        // Bands in multiples of 16 columns (OpenBLAS's SkylakeX kernel width), so no band ends in a partial block.
        let band = (total + parts - 1) / parts, size = (band + 15) / 16 * 16
        let shared = (a: UnsafeRawPointer(a), b: UnsafeRawPointer(b), c: UnsafeMutableRawPointer(c))
        Parallel.forEach(parts) { part in
            let lo = min(total, part * size), hi = min(total, lo + size)
            guard lo < hi else { return }
            let a = shared.a.assumingMemoryBound(to: Float.self), b = shared.b.assumingMemoryBound(to: Float.self)
            let c = shared.c.assumingMemoryBound(to: Float.self)
            if alongColumns {
                // Columns lo..<hi of op(B): rows of B when transposed, else columns.
                let bPart = transposeB ? b + lo * ldb : b + lo
                sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: hi - lo, k: k, alpha: alpha, a, lda: lda, bPart, ldb: ldb,
                      beta: beta, c + lo, ldc: ldc)
            } else {
                // Rows lo..<hi of op(A): columns of A when transposed, else rows.
                let aPart = transposeA ? a + lo : a + lo * lda
                sgemm(transposeA: transposeA, transposeB: transposeB, m: hi - lo, n: n, k: k, alpha: alpha, aPart, lda: lda, b, ldb: ldb,
                      beta: beta, c + lo * ldc, ldc: ldc)
            }
        }
    }

    /// C[m×n] = alpha · A[m×k] · B[n×k]ᵀ + beta · C. This is the shape of a linear layer: x · Wᵀ with W [out, in].
    @inline(__always)
    public static func matmulTransposedB(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0
    ) {
        sgemm(transposeB: true, m: m, n: n, k: k, alpha: alpha, a, lda: k, b, ldb: k, beta: beta, c, ldc: n)
    }

    /// C[m×n] = alpha · A[m×k] · B[k×n] + beta · C.
    @inline(__always)
    public static func matmul(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                              m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0) {
        sgemm(m: m, n: n, k: k, alpha: alpha, a, lda: k, b, ldb: n, beta: beta, c, ldc: n)
    }

    /// y[rows] = alpha · A[rows×cols] · x + beta · y (row-major A): a linear layer applied to one token.
    @inline(__always)
    public static func matvec(
        _ a: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
        rows: Int, cols: Int, lda: Int? = nil, alpha: Float = 1, beta: Float = 0
    ) {
        _ = configured
        cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), alpha, a, Int32(lda ?? cols), x, 1, beta, y, 1)
    }

    /// The thin SVD of a row-major [m×n] matrix given as an array (left untouched): s [k] descending, u [m×k],
    /// vt [k×n], k = min(m, n); nil when LAPACK does not converge.
    public static func svd(_ matrix: [Float], m: Int, n: Int) -> (s: [Float], u: [Float], vt: [Float])? {
        let k = min(m, n)
        precondition(matrix.count == m * n && k > 0, "svd: a [\(m)×\(n)] matrix")
        var work = matrix
        var s = [Float](repeating: 0, count: k), u = [Float](repeating: 0, count: m * k), vt = [Float](repeating: 0, count: k * n)
        let info = work.withUnsafeMutableBufferPointer { wp in
            s.withUnsafeMutableBufferPointer { sp in
                u.withUnsafeMutableBufferPointer { up in
                    vt.withUnsafeMutableBufferPointer { vp in
                        svd(wp.baseAddress!, m: m, n: n, s: sp.baseAddress!, u: up.baseAddress!, vt: vp.baseAddress!)
                    }
                }
            }
        }
        return info == 0 ? (s, u, vt) : nil
    }

    /// The thin SVD of a row-major [m×n] float64 matrix (LAPACK dgesdd): s [k] descending, u [m×k], vt [k×n],
    /// k = min(m, n); nil when LAPACK does not converge. For small exact decompositions (Arrow prototypes).
    public static func svd(_ matrix: [Double], m: Int, n: Int) -> (s: [Double], u: [Double], vt: [Double])? {
        let k = min(m, n)
        precondition(matrix.count == m * n && k > 0, "svd: a [\(m)×\(n)] matrix")
        _ = configured
        var work = matrix
        var s = [Double](repeating: 0, count: k), u = [Double](repeating: 0, count: m * k), vt = [Double](repeating: 0, count: k * n)
        let info = work.withUnsafeMutableBufferPointer { wp in
            s.withUnsafeMutableBufferPointer { sp in
                u.withUnsafeMutableBufferPointer { up in
                    vt.withUnsafeMutableBufferPointer { vp in
                        LAPACKE_dgesdd(LAPACK_ROW_MAJOR, Int8(UInt8(ascii: "S")), Int32(m), Int32(n), wp.baseAddress!, Int32(n), sp.baseAddress!,
                                       up.baseAddress!, Int32(k), vp.baseAddress!, Int32(n))
                    }
                }
            }
        }
        return info == 0 ? (s, u, vt) : nil
    }

    /// The thin SVD of a row-major [m×n] matrix (LAPACK sgesdd, job 'S'): `a` is overwritten, `s` receives min(m, n)
    /// singular values (descending), `u` [m×k] and `vt` [k×n], k = min(m, n). Returns LAPACK's info (0: success,
    /// > 0: did not converge).
    public static func svd(_ a: UnsafeMutablePointer<Float>, m: Int, n: Int, s: UnsafeMutablePointer<Float>,
                           u: UnsafeMutablePointer<Float>, vt: UnsafeMutablePointer<Float>) -> Int {
        _ = configured
        let k = min(m, n)
        return Int(LAPACKE_sgesdd(LAPACK_ROW_MAJOR, Int8(UInt8(ascii: "S")), Int32(m), Int32(n), a, Int32(n), s, u, Int32(k),
                                  vt, Int32(n)))
    }

    /// The number of OpenBLAS threads in use.
    public static var threads: Int { _ = configured; return Int(openblas_get_num_threads()) }

    /// Sets the number of OpenBLAS threads (benchmarks pin this to compare with other programs at equal threads).
    public static func setThreads(_ n: Int) {
        _ = configured
        openblas_set_num_threads(Int32(n))
    }

    /// The kernel set OpenBLAS uses ("SkylakeX", "Haswell", ...).
    public static var coreName: String { _ = configured; return String(cString: openblas_get_corename()) }

    /// What BLAS users expect: OPENBLAS_NUM_THREADS when it is set, else one thread per core.
    public static var defaultThreads: Int {
        if let text = ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"], let n = Int(text), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// OpenBLAS picks its kernels from the CPU's family and model numbers, and version 0.3.21 (Debian 12) does not
    /// know recent Xeons (nor what some hypervisors report): it falls back to "Prescott", SSE3 kernels, which run
    /// sgemm 4× slower than its AVX-512 ones on this machine (7 against 29 GFLOP/s on 2 cores). Unless the user chose
    /// with OPENBLAS_CORETYPE, a pre-AVX2 choice on a CPU (and OS) with AVX-512 or AVX2 is redone here, once, before
    /// the first product: the library's own re-initialisation (`gotoblas_dynamic_quit` then `gotoblas_dynamic_init`,
    /// looked up with dlsym, so another BLAS build is left alone) with OPENBLAS_CORETYPE set for that call only.
    static let configured: Void = {
        let environment = ProcessInfo.processInfo.environment
        guard environment["OPENBLAS_CORETYPE"] == nil else { return }
        let current = String(cString: openblas_get_corename()).lowercased()
        let modern = ["haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"]
        guard !modern.contains(current) else { return }
        let wanted: String
        if tessera_cpu_has_avx512() != 0 {
            wanted = "SkylakeX"
        } else if tessera_cpu_has_avx2() != 0 {
            wanted = "Haswell"
        } else {
            return
        }
        guard let library = dlopen(nil, RTLD_NOW),
              let quit = dlsym(library, "gotoblas_dynamic_quit"),
              let initialise = dlsym(library, "gotoblas_dynamic_init") else { return }
        setenv("OPENBLAS_CORETYPE", wanted, 1)
        unsafeBitCast(quit, to: (@convention(c) () -> Void).self)()
        unsafeBitCast(initialise, to: (@convention(c) () -> Void).self)()
        unsetenv("OPENBLAS_CORETYPE")
    }()
}
