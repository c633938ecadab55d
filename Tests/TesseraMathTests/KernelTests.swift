import Foundation
import Testing
import TesseraCore
import TesseraMath

/// Runs `body` with the kernels at each level this CPU has: the widest, AVX2 (forced below AVX-512), portable.
private func atEveryLevel(_ body: (String) throws -> Void) rethrows {
    try body(CPUKernels.level)
    CPUKernels.forceAVX2(true)
    try body(CPUKernels.level)
    CPUKernels.forceAVX2(false)
    CPUKernels.forcePortable(true)
    defer { CPUKernels.forcePortable(false) }
    try body(CPUKernels.level)
}

@Suite(.serialized) struct AttentionKernelTests {
    /// softmax(scale · q·k) · V in double, for one query head over `n` keys.
    func reference(q: [Float], keys: [Float], values: [Float], n: Int, d: Int, scale: Double) -> [Double] {
        var scores = (0..<n).map { j in (0..<d).reduce(0.0) { $0 + Double(q[$1]) * Double(keys[j * d + $1]) } * scale }
        let m = scores.max() ?? 0
        scores = scores.map { exp($0 - m) }
        let sum = scores.reduce(0, +)
        return (0..<d).map { c in (0..<n).reduce(0.0) { $0 + scores[$1] * Double(values[$1 * d + c]) } / sum }
    }

    /// One decoded token's attention (GQA runs of heads sharing a KV head, split over cores) against a double
    /// reference: head dimensions that take the AVX-512 path (64), only the AVX2 one (40) or only portable C (36),
    /// groups of 1, 3 and 5 heads, lengths around the vector widths, at every kernel level.
    @Test(arguments: [(64, 3, 512), (64, 1, 17), (40, 5, 33), (36, 3, 7), (16, 2, 1)])
    func decodeAttentionMatchesReference(headDim d: Int, group: Int, keys n: Int) {
        let kvHeads = 3, heads = kvHeads * group, capacity = n + 5
        let q = (0..<(heads * d)).map { Float(sin(Double($0) * 0.37)) }
        let cacheK = (0..<(kvHeads * capacity * d)).map { Float(cos(Double($0) * 0.11)) * 1.3 }
        let cacheV = (0..<(kvHeads * capacity * d)).map { Float(sin(Double($0) * 0.07)) }
        let scale = 1 / Double(d).squareRoot()
        atEveryLevel { level in
            var out = [Float](repeating: .nan, count: heads * d)
            var scratch = [Float](repeating: 0, count: Attention.scratchCount(tokens: 1, start: n - 1, heads: heads, kvHeads: kvHeads, headDim: d))
            Attention.attend(q: q, ldq: heads * d, layout: TokenLayout(causal: 1, start: n - 1), keys: cacheK, values: cacheV,
                             cacheCapacity: capacity, heads: heads, kvHeads: kvHeads, headDim: d, scale: Float(scale), window: nil,
                             threads: 2, scratch: &scratch, out: &out, ldo: heads * d)
            var worst = 0.0
            for h in 0..<heads {
                let kvh = h / group
                let keys = Array(cacheK[(kvh * capacity * d)..<((kvh * capacity + n) * d)])
                let values = Array(cacheV[(kvh * capacity * d)..<((kvh * capacity + n) * d)])
                let want = reference(q: Array(q[(h * d)..<((h + 1) * d)]), keys: keys, values: values, n: n, d: d, scale: scale)
                for c in 0..<d { worst = max(worst, abs(Double(out[h * d + c]) - want[c])) }
            }
            #expect(worst < 2e-6, "\(level), d \(d), group \(group), n \(n): max |Δ| = \(worst)")
        }
    }
}

@Suite(.serialized) struct SgemmAcrossCoresTests {
    /// Every transpose combination, split along columns (wide C) and along rows (tall C), with leading dimensions
    /// past the widths and beta = 1, against the one-call product at two OpenBLAS threads.
    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func splitProductsMatchTheWholeProduct(transposeA: Bool, transposeB: Bool) {
        let previous = Linalg.threads
        Linalg.setThreads(2)
        defer { Linalg.setThreads(previous) }
        for (m, n, k) in [(37, 1500, 130), (900, 70, 128), (64, 129, 600)] {
            let lda = (transposeA ? m : k) + 3, ldb = (transposeB ? k : n) + 5, ldc = n + 7
            let a = (0..<((transposeA ? k : m) * lda)).map { Float(sin(Double($0) * 0.013)) }
            let b = (0..<((transposeB ? n : k) * ldb)).map { Float(cos(Double($0) * 0.007)) }
            let c0 = (0..<(m * ldc)).map { Float($0 % 13) * 0.25 }
            var whole = c0, split = c0
            Linalg.sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: 0.5, a, lda: lda, b, ldb: ldb, beta: 1, &whole, ldc: ldc)
            Linalg.sgemmAcrossCores(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: 0.5, a, lda: lda, b, ldb: ldb,
                                    beta: 1, &split, ldc: ldc)
            var worst: Float = 0
            for i in 0..<(m * ldc) { worst = max(worst, abs(whole[i] - split[i]) / max(1, abs(whole[i]))) }
            // OpenBLAS picks its blocking from the product's shape, so a band's sums may round differently: float32
            // rounding of up to 600 terms of magnitude about 1.
            #expect(worst <= 1e-4, "\(m)×\(n)×\(k) transposeA \(transposeA) transposeB \(transposeB): max relative Δ \(worst)")
            // The padding past n in each row of C is untouched.
            for r in 0..<m { for j in n..<ldc { #expect(split[r * ldc + j] == c0[r * ldc + j]) } }
        }
    }
}

@Suite struct LinalgTests {
    /// Every transpose combination and leading dimension of the one sgemm wrapper against a double loop.
    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func sgemmMatchesLoops(transposeA: Bool, transposeB: Bool) {
        let m = 7, n = 5, k = 9, lda = (transposeA ? m : k) + 2, ldb = (transposeB ? k : n) + 3, ldc = n + 1
        let a = (0..<((transposeA ? k : m) * lda)).map { Float(sin(Double($0))) }
        let b = (0..<((transposeB ? n : k) * ldb)).map { Float(cos(Double($0))) }
        var c = [Float](repeating: 1, count: m * ldc)
        Linalg.sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: 2, a, lda: lda, b, ldb: ldb, beta: 0.5, &c, ldc: ldc)
        var worst = 0.0
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k {
                    let x = transposeA ? a[p * lda + i] : a[i * lda + p]
                    let y = transposeB ? b[j * ldb + p] : b[p * ldb + j]
                    s += Double(x) * Double(y)
                }
                worst = max(worst, abs(Double(c[i * ldc + j]) - (2 * s + 0.5)))
            }
        }
        #expect(worst < 1e-5)
    }

    /// The SVD wrapper reconstructs its matrix, and singular values come out descending.
    @Test func svdReconstructs() {
        let m = 6, n = 4
        let a = (0..<(m * n)).map { Float(sin(Double($0 * $0) * 0.1)) }
        var work = a, s = [Float](repeating: 0, count: n), u = [Float](repeating: 0, count: m * n), vt = [Float](repeating: 0, count: n * n)
        #expect(Linalg.svd(&work, m: m, n: n, s: &s, u: &u, vt: &vt) == 0)
        #expect(zip(s, s.dropFirst()).allSatisfy { $0 >= $1 })
        var worst: Float = 0
        for i in 0..<m {
            for j in 0..<n {
                var v: Float = 0
                for r in 0..<n { v += u[i * n + r] * s[r] * vt[r * n + j] }
                worst = max(worst, abs(v - a[i * n + j]))
            }
        }
        #expect(worst < 1e-5)
    }

    /// OpenBLAS never runs its generic SSE3 kernels where the CPU has AVX2 (0.3.21 falls back to them for CPUs it
    /// does not know), unless the user chose a core type.
    @Test func openBLASUsesTheCPUsVectorKernels() {
        guard ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil, CPUKernels.vectorised else { return }
        #expect(!["prescott", "core2", "nehalem", "katmai"].contains(Linalg.coreName.lowercased()), "OpenBLAS core: \(Linalg.coreName)")
    }
}

@Suite struct FloatCodecTests {
    /// Half and bfloat16 encodings round-trip, and the finite check catches NaN, infinity and values that round to
    /// infinity in the 16-bit format, on buffers large enough to split over cores.
    @Test(arguments: [FloatCodec.Half.f16, .bf16])
    func roundTripAndFiniteChecks(format: FloatCodec.Half) {
        let n = 200_000
        let x = (0..<n).map { Float(sin(Double($0) * 0.001)) * 100 }
        var encoded = [UInt16](repeating: 0, count: n), decoded = [Float](repeating: 0, count: n)
        let finite = x.withUnsafeBufferPointer { FloatCodec.encode($0, format, into: &encoded) }
        #expect(finite)
        FloatCodec.decode(encoded, format, into: &decoded, count: n)
        var rounded = x
        rounded.withUnsafeMutableBufferPointer { FloatCodec.round($0, to: format) }
        #expect(decoded == rounded)
        let tolerance: Float = format == .f16 ? 1e-3 : 8e-3
        #expect(zip(x, decoded).allSatisfy { abs($0 - $1) <= tolerance * max(1, abs($0)) })

        var bad = x
        bad[150_001] = format == .f16 ? 70_000 : .infinity
        #expect(!bad.withUnsafeBufferPointer { FloatCodec.encode($0, format, into: &encoded) })
        if format == .f16 {
            #expect(bad.withUnsafeBufferPointer { FloatCodec.firstOverflow($0, .f16) } == 150_001)
            #expect(bad.withUnsafeBufferPointer { FloatCodec.firstNonFinite($0) } == nil)
        } else {
            #expect(bad.withUnsafeBufferPointer { FloatCodec.firstNonFinite($0) } == 150_001)
        }
        var bytes = [UInt8](repeating: 0, count: 4 * n)
        bad[3] = .nan
        #expect(!bad.withUnsafeBufferPointer { FloatCodec.encodeFloat32($0, into: &bytes) })
        #expect(x.withUnsafeBufferPointer { FloatCodec.encodeFloat32($0, into: &bytes) })
        #expect(bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) } == x)
    }
}

@Suite struct ParallelLoopTests {
    /// Loops started from several threads at once (one gets the spinning workers, the others fall back to
    /// libdispatch) and loops nested inside a loop's body all visit every index once.
    @Test func concurrentAndNestedLoops() {
        let outer = 8, inner = 5000
        var counts = [Int](repeating: 0, count: outer * inner)
        counts.withUnsafeMutableBufferPointer { c in
            guard let base = c.baseAddress else { return }
            let p = SharedMutablePointer(base)
            DispatchQueue.concurrentPerform(iterations: outer) { o in
                Parallel.forEach(4) { part in
                    Parallel.forEach(inner / 1000) { block in
                        for i in (block * 1000)..<((block + 1) * 1000) where i % 4 == part { p[o * inner + i] += 1 }
                    }
                }
            }
        }
        #expect(counts.allSatisfy { $0 == 1 })
    }

    /// Many short regions in a row (a decoded token's pattern) all complete, with every task run once.
    @Test func manyShortRegions() {
        var total = [Int](repeating: 0, count: 3)
        total.withUnsafeMutableBufferPointer { t in
            guard let base = t.baseAddress else { return }
            let p = SharedMutablePointer(base)
            for _ in 0..<20_000 { Parallel.forEach(3) { i in p[i] += 1 } }
        }
        #expect(total == [20_000, 20_000, 20_000])
    }
}

@Suite(.serialized) struct LoRARowKernelTests {
    /// `dotRows` and `axpyRows` (one decoded token through LoRA factors and router vectors) against double loops:
    /// row counts around the four-row blocks (1, 3, 4, 7, 16), widths around the vector lengths (5, 16, 33, 576), a
    /// leading dimension past the width, at every kernel level.
    @Test(arguments: [(1, 5), (3, 16), (4, 33), (7, 576), (16, 191)])
    func rowKernelsMatchDoubleLoops(rows: Int, width n: Int) {
        let ld = n + 3
        let a = (0..<(rows * ld)).map { Float(sin(Double($0) * 0.37)) * 0.8 }
        let x = (0..<n).map { Float(cos(Double($0) * 0.13)) }
        let coefficients = (0..<rows).map { Float(0.5 - Double($0) * 0.21) }
        let y0 = (0..<n).map { Float(sin(Double($0) * 0.05)) }
        let wantDots = (0..<rows).map { r in (0..<n).reduce(0.0) { $0 + Double(a[r * ld + $1]) * Double(x[$1]) } }
        let wantY = (0..<n).map { i in (0..<rows).reduce(Double(y0[i])) { $0 + Double(coefficients[$1]) * Double(a[$1 * ld + i]) } }
        atEveryLevel { level in
            var dots = [Float](repeating: .nan, count: rows)
            var y = y0
            a.withUnsafeBufferPointer { ap in
                x.withUnsafeBufferPointer { xp in
                    coefficients.withUnsafeBufferPointer { cp in
                        VectorKernels.dotRows(ap.baseAddress!, lda: ld, rows: rows, xp.baseAddress!, count: n, into: &dots)
                        VectorKernels.axpyRows(ap.baseAddress!, ldb: ld, rows: rows, coefficients: cp.baseAddress!, into: &y, count: n)
                    }
                }
            }
            let dotError = zip(dots, wantDots).map { abs(Double($0) - $1) }.max() ?? .nan
            let axpyError = zip(y, wantY).map { abs(Double($0) - $1) }.max() ?? .nan
            #expect(dotError < 1e-5 * Double(n).squareRoot(), "\(level) dotRows \(rows)×\(n): max |Δ| = \(dotError)")
            #expect(axpyError < 1e-5, "\(level) axpyRows \(rows)×\(n): max |Δ| = \(axpyError)")
        }
    }

    /// Padding past each row's width is never read: NaNs there leave every result finite.
    @Test func rowKernelsReadOnlyTheirWidth() {
        let rows = 6, n = 20, ld = 32
        var a = [Float](repeating: .nan, count: rows * ld)
        for r in 0..<rows { for i in 0..<n { a[r * ld + i] = Float(r + 1) * 0.01 * Float(i) } }
        let x = [Float](repeating: 1, count: n), c = [Float](repeating: 1, count: rows)
        atEveryLevel { level in
            var dots = [Float](repeating: 0, count: rows), y = [Float](repeating: 0, count: n)
            VectorKernels.dotRows(a, lda: ld, rows: rows, x, count: n, into: &dots)
            VectorKernels.axpyRows(a, ldb: ld, rows: rows, coefficients: c, into: &y, count: n)
            #expect(dots.allSatisfy(\.isFinite) && y.allSatisfy(\.isFinite), "\(level)")
        }
    }
}
