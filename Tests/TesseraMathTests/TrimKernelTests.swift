import Foundation
import Testing
import TesseraMath
import TesseraTestSupport

/// The magnitude trims' kernels against plain restatements: the radix select's threshold (whose long-buffer path
/// reads the data once when a sample guesses the bucket, and falls back to a second pass otherwise) against a sort,
/// and the task-arithmetic combination applying a trim from a threshold against the same trim applied beforehand.
@Suite struct TrimKernelTests {
    /// The threshold by sorting: the key at `rank`, how many keys come strictly before it, how many equal it.
    static func sortedThreshold(_ x: [Float], rank: Int, descending: Bool) -> [Int] {
        let keys = x.map { MagnitudeSelect.key($0) }
        let sorted = descending ? keys.sorted(by: >) : keys.sorted()
        let value = sorted[rank]
        let before = keys.filter { descending ? $0 > value : $0 < value }.count
        return [Int(value), before, keys.filter { $0 == value }.count]
    }

    /// Long buffers (the sampled path) laid out so that the sample is right, is misled (the runs it reads hold the
    /// smallest values: the two passes must run), and meets a bucket too full to keep (half the values equal); with
    /// the window pass's kernel at the CPU's level and forced portable.
    @Test(arguments: ["spread", "fewDistinct", "misleadingSample", "halfEqual"], [false, true])
    func thresholdMatchesASort(layout: String, portable: Bool) {
        if portable { CPUKernels.forcePortable(true) }
        defer { if portable { CPUKernels.forcePortable(false) } }
        let n = 600_001
        var g = TestRNG(state: 11)
        var x = [Float](repeating: 0, count: n)
        switch layout {
        case "spread":
            // Differences of two floats, as task vectors are: many magnitudes repeat.
            for i in 0..<n {
                let b = (g.uniform() - 0.5) * 0.2
                x[i] = (b + (g.uniform() - 0.5) * 0.004) - b
            }
        case "fewDistinct":
            for i in 0..<n { x[i] = Float(Int(g.next() % 1000) - 500) / 64 }
        case "misleadingSample":
            // The sample reads 256 runs of 128 elements spaced (n − 128) / 255 apart: those are tiny, the rest large.
            let step = (n - 128) / 255
            for i in 0..<n { x[i] = (g.uniform() + 1) * (i % step < 128 ? 1e-6 : 1) }
        default:
            for i in 0..<n { x[i] = i % 2 == 0 ? 0.5 : g.uniform() }
        }
        x[7] = -0.0; x[99] = .infinity; x[1234] = -.infinity; x[4321] = .leastNonzeroMagnitude
        for descending in [true, false] {
            for rank in [0, 1, n / 4, n / 2, n / 2 + 1, n - 2, n - 1] {
                let got = x.withUnsafeBufferPointer { MagnitudeSelect.threshold($0, rank: rank, descending: descending) }
                #expect([Int(got.value), got.before, got.ties] == Self.sortedThreshold(x, rank: rank, descending: descending),
                        "\(layout) rank \(rank) descending \(descending)")
            }
        }
    }

    /// `keepFrom` trims inside the combination exactly as zeroing the entries below each model's key first: same
    /// bits out, for every consensus, with entries at the threshold, signed zeros, and negative weights.
    @Test(arguments: [MergeKernels.Consensus.sum, .count, .none])
    func combinationTrimsAsAPriorPass(consensus: MergeKernels.Consensus) {
        let n = 5_003, m = 3
        var g = TestRNG(state: 5)
        var deltas = (0..<m).map { _ in (0..<n).map { _ in (g.uniform() - 0.5) / 8 } }
        let thresholds: [UInt32] = [MagnitudeSelect.key(0.03), 0, MagnitudeSelect.key(0.06)]
        for i in 0..<m {
            for j in stride(from: i, to: n, by: 97) { deltas[i][j] = j % 2 == 0 ? Float(bitPattern: thresholds[i]) : -Float(bitPattern: thresholds[i]) }
            for j in stride(from: i + 5, to: n, by: 89) { deltas[i][j] = j % 2 == 0 ? 0 : -0.0 }
        }
        let trimmed = (0..<m).map { i in deltas[i].map { MagnitudeSelect.key($0) >= thresholds[i] ? $0 : 0 } }
        #expect(trimmed[0].filter { $0 == 0 }.count > n / 3)  // the trim drops entries: the masks matter
        let weights: [Float] = [1, -0.5, 0.7]
        let base = (0..<n).map { _ in g.uniform() - 0.5 }
        for normalize in [true, false] {
            func combine(_ d: [[Float]], keepFrom: [UInt32]?) -> [Float] {
                var out = base
                var arrays = d
                let pointers = UnsafeMutablePointer<UnsafeMutablePointer<Float>>.allocate(capacity: m)
                defer { pointers.deallocate() }
                for i in 0..<m { pointers[i] = arrays[i].withUnsafeMutableBufferPointer { UnsafeMutablePointer(mutating: $0.baseAddress!) } }
                arrays.withUnsafeMutableBufferPointer { _ in
                    out.withUnsafeMutableBufferPointer { o in
                        weights.withUnsafeBufferPointer { w in
                            if let keepFrom {
                                keepFrom.withUnsafeBufferPointer { k in
                                    MergeKernels.taskArithmetic(0..<n, out: o.baseAddress!, deltas: pointers, weights: w.baseAddress!, models: m,
                                                                consensus: consensus, normalize: normalize, lambda: 0.9, divisor: 1.2,
                                                                keepFrom: k.baseAddress!)
                                }
                            } else {
                                MergeKernels.taskArithmetic(0..<n, out: o.baseAddress!, deltas: pointers, weights: w.baseAddress!, models: m,
                                                            consensus: consensus, normalize: normalize, lambda: 0.9, divisor: 1.2)
                            }
                        }
                    }
                }
                return out
            }
            let masked = combine(deltas, keepFrom: thresholds), zeroedFirst = combine(trimmed, keepFrom: nil)
            #expect(masked.map(\.bitPattern) == zeroedFirst.map(\.bitPattern), "normalize \(normalize)")
            #expect(masked != combine(deltas, keepFrom: nil), "normalize \(normalize)")
        }
    }
}
