import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraTestSupport

/// The documented edge cases of TIES (inputs/edge_tv.safetensors) and the three variants against plain sort-based
/// restatements of the reference spec.
@Suite struct TiesEdgeCaseTests {
    /// Rows of a [models, n] tensor as task vectors over a zero base.
    static func plan(rows: [[Float]], density: Double, variant: String = "mergekit", weights: [Double]? = nil) throws -> MergePlan {
        let n = rows[0].count
        let base = try MemorySource("base", floats: [("t", [n], [Float](repeating: 0, count: n))])
        let models = try rows.enumerated().map { i, r in
            MergeInputModel(name: "m\(i)", source: try MemorySource("m\(i)", floats: [("t", [n], r)]),
                            parameters: ["weight": .number(weights?[i] ?? 1), "density": .number(density)])
        }
        return MergePlan(method: "ties", base: MergeInputModel(name: "base", source: base), models: models,
                         parameters: ["ties_variant": .string(variant)])
    }

    static func edgeRows(_ name: String) throws -> [[Float]] {
        let f = try ReferenceData.file("inputs/edge_tv.safetensors")
        let shape = f.info(name)!.shape
        let v = try f.floats(name)
        return (0..<shape[0]).map { Array(v[($0 * shape[1])..<(($0 + 1) * shape[1])]) }
    }

    @Test(arguments: ["tv_a", "tv_b"])
    func zeroSumVotesElectPlusOne(tensor: String) throws {
        let rows = try Self.edgeRows(tensor)
        let out = try runMerge(try Self.plan(rows: rows, density: 1))["t"]!.floats()
        let expected = NaiveSpec.mergekitTies(base: [Float](repeating: 0, count: rows[0].count), models: rows, weights: [1, 1, 1], density: 1)
        #expect(out == expected)
        // Columns whose signed sum is exactly zero: +1 is elected, so the result is the mean of the positive entries.
        for j in rows[0].indices {
            let column = rows.map { $0[j] }
            guard column.reduce(0, +) == 0, column.contains(where: { $0 != 0 }) else { continue }
            let positives = column.filter { $0 > 0 }
            #expect(out[j] == positives.reduce(0, +) / Float(positives.count), "column \(j): \(column) → \(out[j])")
        }
    }

    @Test func tiesAtTheTrimThresholdGoToTheLowerIndex() throws {
        let trim = try Self.edgeRows("trim")[0]   // [3, -1, 1, -1, 1, 0.5, -0.5, 0.5, 0.25, 0]
        // density 0.3: k = 3 → the 3 and the first two of the four |1| entries.
        let k3 = try runMerge(try Self.plan(rows: [trim], density: 0.3))["t"]!.floats()
        #expect(k3.indices.filter { k3[$0] != 0 } == [0, 1, 2])
        #expect(Array(k3[0..<3]) == Array(trim[0..<3]))
        // density 0.45: k = 4.
        let k4 = try runMerge(try Self.plan(rows: [trim], density: 0.45))["t"]!.floats()
        #expect(k4.indices.filter { k4[$0] != 0 } == [0, 1, 2, 3])
        // density 0.05: ⌊0.5⌋ = 0 → max(1, 0) = 1 entry kept.
        let k1 = try runMerge(try Self.plan(rows: [trim], density: 0.05))["t"]!.floats()
        #expect(k1.indices.filter { k1[$0] != 0 } == [0])
        // PEFT keeps ⌊density·n⌋ = 0 entries: the base comes back unchanged.
        let peft = try runMerge(try Self.plan(rows: [trim], density: 0.05, variant: "peft"))["t"]!.floats()
        #expect(peft.allSatisfy { $0 == 0 })
    }

    /// Large tensors (parallel path) with heavy ties at the threshold, against the sort-based spec.
    @Test(arguments: [0.05, 0.3, 0.77])
    func radixSelectionMatchesSortOnTiedData(density: Double) throws {
        var rng = TestRNG(state: 7)
        let n = 150_001
        let base = (0..<n).map { _ in rng.normal() }
        let rows: [[Float]] = (0..<3).map { _ in (0..<n).map { _ in (rng.normal() * 3).rounded() / 4 } }
        let models = rows.map { r in zip(r, base).map { $0 + $1 } }
        // The deltas the kernel sees are (base + r) − base, which rounding may perturb: the oracle gets the same values.
        let baseSource = try MemorySource("base", floats: [("t", [n], base)])
        let weights: [Float] = [1, 0.5, -0.7]
        let inputs = try models.enumerated().map { i, m in
            MergeInputModel(name: "m\(i)", source: try MemorySource("m\(i)", floats: [("t", [n], m)]),
                            parameters: ["weight": .number(Double(weights[i])), "density": .number(density)])
        }
        let out = try runMerge(MergePlan(method: "ties", base: MergeInputModel(name: "b", source: baseSource), models: inputs))["t"]!.floats()
        let expected = NaiveSpec.mergekitTies(base: base, models: models, weights: weights, density: density)
        let mismatches = out.indices.filter { out[$0] != expected[$0] }
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first at \(mismatches.first ?? -1)")
    }

    @Test func peftVariantMatchesSpec() throws {
        let base = try ReferenceData.file("inputs/base.safetensors")
        let fts = try (1...3).map { try ReferenceData.file("inputs/ft\($0).safetensors") }
        let weights: [Double] = [0.5, 1.0, 0.8]
        let plan = MergePlan(method: "ties", base: MergeInputModel(name: "base", source: base),
                             models: fts.enumerated().map { i, f in
                                 MergeInputModel(name: "ft\(i + 1)", source: f, parameters: ["weight": .number(weights[i]), "density": .number(0.3)])
                             },
                             parameters: ["ties_variant": .string("peft"), "lambda": .number(0.7)])
        let out = try runMerge(plan)
        for name in base.tensorNames {
            let expected = NaiveSpec.peftTies(base: try base.floats(name), models: try fts.map { try $0.floats(name) },
                                              weights: weights.map(Float.init), density: 0.3, lambda: 0.7)
            #expect(relativeError(try out[name]!.floats(), expected) <= 1e-6, "\(name)")
        }
    }

    @Test func paperVariantTrimsOverTheWholeModel() throws {
        let base = try ReferenceData.file("inputs/base.safetensors")
        let fts = try (1...3).map { try ReferenceData.file("inputs/ft\($0).safetensors") }
        let plan = MergePlan(method: "ties", base: MergeInputModel(name: "base", source: base),
                             models: fts.enumerated().map { i, f in
                                 MergeInputModel(name: "ft\(i + 1)", source: f, parameters: ["density": .number(0.2)])
                             },
                             parameters: ["ties_variant": .string("paper")])
        let out = try runMerge(plan)
        // Flat task vectors over all tensors in sorted-name order, as the paper's code builds them.
        let names = base.tensorNames.sorted()
        let tvs: [[Float]] = try fts.map { f in
            try names.flatMap { n in zip(try f.floats(n), try base.floats(n)).map { $0 - $1 } }
        }
        let merged = NaiveSpec.paperTies(tvs, k: 0.2)
        var offset = 0
        for name in names {
            let b = try base.floats(name)
            let expected = zip(b, merged[offset..<(offset + b.count)]).map { $0 + $1 }
            #expect(relativeError(try out[name]!.floats(), expected) <= 1e-6, "\(name)")
            offset += b.count
        }
    }

    @Test func breadcrumbsKeepsTheMiddleBand() throws {
        var rng = TestRNG(state: 11)
        let n = 1000
        let tau = (0..<n).map { _ in (rng.normal() * 4).rounded() / 8 }
        let base = try MemorySource("base", floats: [("t", [n], [Float](repeating: 0, count: n))])
        let model = MergeInputModel(name: "m", source: try MemorySource("m", floats: [("t", [n], tau)]),
                                    parameters: ["weight": .number(1), "density": .number(0.3), "gamma": .number(0.05)])
        let out = try runMerge(MergePlan(method: "breadcrumbs", base: MergeInputModel(name: "b", source: base), models: [model]))["t"]!.floats()
        // Spec mk_magnitude_outliers: ascending order (ties as torch's non-stable sort leaves them, `TorchSort`,
        // checked against torch in MergeDTypeTests), keep ranks [n_bot, n_bot + target).
        let target = 300, top = 50, bottom = n - target - top
        let ascending = tau.map { abs($0) }.withUnsafeBufferPointer { TorchSort.order($0, descending: false) }.map { Int($0) }
        var expected = [Float](repeating: 0, count: n)
        for i in ascending[bottom..<(bottom + target)] { expected[i] = tau[i] }
        #expect(out == expected)
    }
}
