import Foundation
import Testing
import TesseraCore
import TesseraMath
import TesseraMerge
import TesseraTestSupport

/// The TIES trim's replay of torch's tie order compares its 4-byte codes as integers, and the task-arithmetic
/// kernel applies the trim from its threshold. Both are checked here on tensors long enough for the block partition
/// and the sampled radix select, against `TorchSort.order` (the whole sort on (key, index) pairs compared as floats,
/// itself checked against torch's argsort in MergeDTypeTests).
@Suite struct TiesTrimReplayTests {
    /// Task-vector-like values: differences of two floats of scale `scale`, so that magnitudes repeat (tens tie at
    /// the median at scale 1), with signed zeros and subnormals among them, and infinities unless `finite`.
    static func taskVector(_ n: Int, seed: UInt64, scale: Float = 1, finite: Bool = false) -> [Float] {
        var rng = TestRNG(state: seed)
        var x = (0..<n).map { _ in
            let b = rng.normal() * scale
            return (b + rng.normal() * 0.002) - b
        }
        for i in stride(from: 3, to: n, by: 997) { x[i] = 0 }
        for i in stride(from: 5, to: n, by: 1009) { x[i] = -0.0 }
        x[13] = .leastNonzeroMagnitude; x[14] = -.leastNonzeroMagnitude
        if !finite { x[11] = .infinity; x[12] = -.infinity }
        return x
    }

    /// The entries mergekit keeps: the first k of torch's argsort(|x|, descending=True).
    static func kept(_ x: [Float], k: Int) -> [Float] {
        let order = x.map { abs($0) }.withUnsafeBufferPointer { TorchSort.order($0, descending: true) }
        var out = [Float](repeating: 0, count: x.count)
        for i in order.prefix(k) { out[Int(i)] = x[Int(i)] }
        return out
    }

    /// Tens of ties at the cut (scale 1) and thousands (scale 0: 256 magnitudes, as in a 16-bit tensor, where tied
    /// elements become pivots).
    @Test(arguments: [(4, 1), (7, 1), (5, 0), (6, 0)] as [(UInt64, Float)])
    func replayKeepsTorchsTies(seed: UInt64, scale: Float) throws {
        let n = 600_000
        var x = Self.taskVector(n, seed: seed, scale: scale)
        if scale == 0 { x = x.map { ($0 * 40_000).rounded() / 256 } }
        for k in [1, n / 3, n / 2, n - 1] {
            let t = x.withUnsafeBufferPointer { MagnitudeSelect.threshold($0, rank: k - 1, descending: true) }
            if k == n / 2 { try #require(t.before + t.ties > k, "ties must straddle the cut for the replay to run") }
            let expected = Self.kept(x, k: k).map(\.bitPattern)
            var trimmed = x
            trimmed.withUnsafeMutableBufferPointer { TorchSort.keepTopK($0, k: k) }
            #expect(trimmed.map(\.bitPattern) == expected, "seed \(seed) k \(k)")
            // The threshold form: the entries from the key on, once the tied ones past the cut are zeroed.
            var masked = x
            let from = masked.withUnsafeMutableBufferPointer { TorchSort.topKThreshold($0, k: k) }
            #expect(masked.map { MagnitudeSelect.key($0) >= from ? $0.bitPattern : 0 } == expected, "seed \(seed) k \(k)")
        }
    }

    /// A NaN magnitude has no place in the integer order: the replay compares floats then, as before. The trim still
    /// keeps every magnitude above the cut's (NaN counts above infinity there) and drops every one below, in both forms.
    @Test func nanMagnitudesTakeTheFloatComparison() {
        let n = 20_000
        var rng = TestRNG(state: 9)
        // Fifty magnitudes, none zero: hundreds tie at the cut.
        var x = (0..<n).map { _ in Float(Int(rng.next() % 50) + 1) / 16 * (rng.next() % 2 == 0 ? 1 : -1) }
        for i in stride(from: 17, to: n, by: 501) { x[i] = i % 2 == 0 ? .nan : -.nan }
        let k = n / 2
        let t = x.withUnsafeBufferPointer { MagnitudeSelect.threshold($0, rank: k - 1, descending: true) }
        #expect(t.before + t.ties > k)
        var trimmed = x
        trimmed.withUnsafeMutableBufferPointer { TorchSort.keepTopK($0, k: k) }
        var masked = x
        let from = masked.withUnsafeMutableBufferPointer { TorchSort.topKThreshold($0, k: k) }
        #expect(from == t.value)
        #expect(masked.map { MagnitudeSelect.key($0) >= from ? $0.bitPattern : 0 } == trimmed.map(\.bitPattern))
        for i in 0..<n where MagnitudeSelect.key(x[i]) != t.value {
            #expect(trimmed[i].bitPattern == (MagnitudeSelect.key(x[i]) > t.value ? x[i].bitPattern : 0), "index \(i)")
        }
        let tiedKept = (0..<n).filter { MagnitudeSelect.key(x[$0]) == t.value && trimmed[$0] != 0 }.count
        #expect(tiedKept > 0 && tiedKept < t.ties)
    }

    /// The whole TIES merge on a long tensor (sampled radix select, block partition, integer codes, trim applied in
    /// the combination) against the sort-based restatement of mergekit's.
    @Test func longTensorMergesAsTheSpec() throws {
        let n = 600_000
        var rng = TestRNG(state: 3)
        let base = (0..<n).map { _ in rng.normal() * 0.05 }
        let models = (0..<2).map { s in zip(base, Self.taskVector(n, seed: 20 + UInt64(s), finite: true)).map { $0 + $1 } }
        let baseSource = try MemorySource("base", floats: [("t", [n], base)])
        let inputs = try models.enumerated().map { i, m in
            MergeInputModel(name: "m\(i)", source: try MemorySource("m\(i)", floats: [("t", [n], m)]),
                            parameters: ["weight": .number(i == 0 ? 1 : 0.6), "density": .number(0.5)])
        }
        let out = try runMerge(MergePlan(method: "ties", base: MergeInputModel(name: "b", source: baseSource), models: inputs))["t"]!.floats()
        let expected = NaiveSpec.mergekitTies(base: base, models: models, weights: [1, 0.6], density: 0.5)
        let mismatches = out.indices.filter { out[$0].bitPattern != expected[$0].bitPattern }
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first at \(mismatches.first ?? -1)")
    }
}
