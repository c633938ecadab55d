import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraTestSupport

/// Edge cases of model_stock, della, della_linear, sce, nearswap, arcee_fusion, ram, ramplus_tl and passthrough
/// (their agreement with mergekit's numbers is checked by the mergekit fixtures). Expected values here follow from
/// the definitions by hand (orthogonal task vectors, exact thresholds, ...), not from restating the code.
@Suite struct MergeMethodsATests {
    /// One tensor "w" of `shape` per model; `base` as the base model; `models` listed in order.
    static func plan(_ method: String, base: [Float]?, models: [[Float]], shape: [Int]? = nil,
                     global: [String: ParameterSetting] = [:], model: [[String: ParameterSetting]]? = nil,
                     listBase: Bool = false) throws -> MergePlan {
        let s = shape ?? [models.first?.count ?? 0]
        let b = try base.map { MergeInputModel(name: "base", source: try MemorySource("base", floats: [("w", s, $0)])) }
        var inputs = try models.enumerated().map { i, m in
            MergeInputModel(name: "m\(i)", source: try MemorySource("m\(i)", floats: [("w", s, m)]), parameters: model?[i] ?? [:])
        }
        if listBase, let b { inputs.insert(b, at: 0) }
        return MergePlan(method: method, base: b, models: inputs, parameters: global)
    }

    static func merged(_ plan: MergePlan) throws -> [Float] { try runMerge(plan)["w"]!.floats() }

    /// The one-line error a plan fails with (recording an issue if it does not fail).
    static func failure(_ plan: MergePlan) -> TesseraError? {
        do {
            _ = try runMerge(plan)
            Issue.record("expected \(plan.method) to fail")
            return nil
        } catch let e as TesseraError {
            #expect(!e.message.contains("\n"), "one line: \(e.message)")
            return e
        } catch {
            Issue.record("unexpected error \(error)")
            return nil
        }
    }

    static func normals(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = TestRNG(state: seed)
        return (0..<n).map { _ in rng.normal() * scale }
    }

    // MARK: registry

    @Test func everyMethodIsRegisteredUnderMergekitsName() throws {
        for name in ["model_stock", "della", "della_linear", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl", "passthrough"] {
            #expect(try MergeRegistry.method(named: name).name == name)
        }
    }

    @Test func defaultsAreMergekits() throws {
        enum Scope { case globalParameters, modelParameters }
        func defaults(_ name: String, _ scope: Scope) throws -> [String: MergeValue] {
            let t = try MergeRegistry.method(named: name)
            let definitions = scope == .globalParameters ? t.globalParameters : t.modelParameters
            return Dictionary(uniqueKeysWithValues: definitions.compactMap { d in d.defaultValue.map { (d.name, $0) } })
        }
        let della = try defaults("della", .globalParameters), dellaLinear = try defaults("della_linear", .globalParameters)
        #expect(della["normalize"] == .bool(true) && della["rescale"] == .bool(true) && della["lambda"] == .number(1))
        #expect(dellaLinear["normalize"] == .bool(false) && dellaLinear["rescale"] == .bool(true))
        #expect(try defaults("della", .modelParameters)["epsilon"] == .number(0.15))
        #expect(try defaults("della", .modelParameters)["density"] == .number(1))
        #expect(try defaults("sce", .globalParameters)["select_topk"] == .number(1))
        #expect(try defaults("ram", .globalParameters)["epsilon"] == .number(1e-5))
        let plus = try defaults("ramplus_tl", .globalParameters)
        #expect(plus["r"] == .number(0.1) && plus["alpha"] == .number(0.2) && plus["epsilon"] == .number(1e-5))
        #expect(try defaults("model_stock", .globalParameters)["filter_wise"] == .bool(false))
        #expect(try defaults("nearswap", .globalParameters)["t"] == nil, "t is required")
        for name in ["breadcrumbs", "breadcrumbs_ties"] {
            let g = try defaults(name, .globalParameters), m = try defaults(name, .modelParameters)
            #expect(g["normalize"] == .bool(false) && g["rescale"] == .bool(false) && g["lambda"] == .number(1))
            #expect(m["density"] == .number(1) && m["gamma"] == .number(0.01))
        }
    }

    // MARK: model_stock

    @Test func modelStockNeedsTwoModelsBesideTheBase() throws {
        let base: [Float] = [1, 2, 3, 4]
        let e = Self.failure(try Self.plan("model_stock", base: base, models: [[1, 2, 3, 5]]))
        #expect(e?.message.contains("at least two") == true)
        // The base listed among the models does not count.
        let e2 = Self.failure(try Self.plan("model_stock", base: base, models: [[1, 2, 3, 5]], listBase: true))
        #expect(e2?.message.contains("at least two") == true)
    }

    @Test func modelStockTwoModelsByAngle() throws {
        let base: [Float] = [1, 2, 3, 4]
        // Orthogonal task vectors: cos = 0, t = 0: the base.
        #expect(try Self.merged(try Self.plan("model_stock", base: base, models: [[2, 2, 3, 4], [1, 3, 3, 4]])) == base)
        // Identical task vectors ([3, 4, 0, 0]: norms exact): cos = 1, t = 2·1/(1 + 1) = 1: their average, the model.
        let m: [Float] = [4, 6, 3, 4]
        #expect(try Self.merged(try Self.plan("model_stock", base: base, models: [m, m])) == m)
        // Opposite task vectors: 1 + (2 − 1)·(−1) = 0 is singular: the base is kept.
        #expect(try Self.merged(try Self.plan("model_stock", base: base, models: [[2, 2, 3, 4], [0, 2, 3, 4]])) == base)
        // cos = 1/2 (60°): t = 2·(1/2)/(1 + 1/2) = 2/3 of the way from the base to the average.
        let r = try Self.merged(try Self.plan("model_stock", base: [0, 0], models: [[2, 0], [1, Float(3).squareRoot()]]))
        let avg: [Float] = [1.5, Float(3).squareRoot() / 2]
        for k in 0..<2 { #expect(abs(r[k] - 2 * avg[k] / 3) < 1e-6) }
    }

    @Test func modelStockThreeModels() throws {
        // Three mutually orthogonal task vectors: cos = 0, the base; three equal ones: t = 3/(1 + 2) = 1.
        let base: [Float] = [0, 0, 0, 5]
        #expect(try Self.merged(try Self.plan("model_stock", base: base, models: [[1, 0, 0, 5], [0, 1, 0, 5], [0, 0, 1, 5]])) == base)
        let m: [Float] = [2, -1, 2, 5]  // task vector [2, −1, 2, 0], norm 3
        #expect(try Self.merged(try Self.plan("model_stock", base: base, models: [m, m, m], listBase: true)) == m)
    }

    @Test func modelStockOnALargeTensor() throws {
        // 300,000 entries (sums over blocks in parallel): identical task vectors of 40,000 ones (norm 200, exact) give
        // t = 1, the model; a third model with an orthogonal task vector gives cos = (1 + 0 + 0)/3, t = 3·(1/3)/(1 + 2/3).
        let n = 300_000
        let base = Self.normals(n, seed: 4)
        var m = base, o = base
        for j in 0..<40_000 { m[j] += 1 }
        for j in 100_000..<140_000 { o[j] += 1 }
        #expect(try Self.merged(try Self.plan("model_stock", base: base, models: [m, m])) == m)
        let r = try Self.merged(try Self.plan("model_stock", base: base, models: [m, m, o]))
        let t: Float = 0.6
        for j in [0, 39_999, 40_000, 100_000, 299_999] {
            let avg = (m[j] + m[j] + o[j]) / 3
            #expect(abs(r[j] - (t * avg + (1 - t) * base[j])) < 1e-6)
        }
    }

    @Test func modelStockFilterWiseTakesOneRatioPerRow() throws {
        // Row 0: identical task vectors (t = 1), row 1: orthogonal ones (t = 0).
        let base: [Float] = [0, 0, 1, 1]
        let a: [Float] = [1, 2, 2, 1], b: [Float] = [1, 2, 1, 2]
        let rows = try Self.merged(try Self.plan("model_stock", base: base, models: [a, b], shape: [2, 2], global: ["filter_wise": .bool(true)]))
        #expect(rows == [1, 2, 1, 1])
        // Over the whole tensor one t applies to both rows: neither the models' row 0 nor the base's row 1.
        let whole = try Self.merged(try Self.plan("model_stock", base: base, models: [a, b], shape: [2, 2]))
        #expect(whole != rows)
    }

    // MARK: nearswap

    @Test func nearswapThreshold() throws {
        let a: [Float] = [0, 0, 0, 0, 1]
        let b: [Float] = [0.05, 0.1, 0.2, 0.4, 1]
        let r = try Self.merged(try Self.plan("nearswap", base: a, models: [b], global: ["t": .number(0.1)]))
        // |a − b| ≤ t: b whole; |a − b| = 2t: the midpoint; 4t: a quarter of the way; equal entries stay.
        #expect(r[0] == 0.05 && r[1] == 0.1 && r[4] == 1)
        #expect(abs(r[2] - 0.1) < 1e-7 && abs(r[3] - 0.1) < 1e-7)
        // t = 0 is the base.
        #expect(try Self.merged(try Self.plan("nearswap", base: a, models: [b], global: ["t": .number(0)])) == a)
        // t is required; one other model only.
        #expect(Self.failure(try Self.plan("nearswap", base: a, models: [b]))?.message.contains("'t'") == true)
        #expect(Self.failure(try Self.plan("nearswap", base: a, models: [b, b], global: ["t": .number(0.1)]))?.message.contains("exactly two") == true)
        // The base listed again is not a second model.
        #expect(try Self.merged(try Self.plan("nearswap", base: a, models: [b], global: ["t": .number(0.1)], listBase: true)) == r)
    }

    // MARK: passthrough

    @Test func passthroughCopiesOrScalesOneModel() throws {
        let x: [Float] = [1, -2, 3.5]
        #expect(try Self.merged(try Self.plan("passthrough", base: nil, models: [x])) == x)
        let scaled = try Self.merged(try Self.plan("passthrough", base: nil, models: [x], model: [["scale": .number(0.5)]]))
        #expect(scaled == [0.5, -1, 1.75])
        // A filter list that matches nothing leaves the tensor unscaled.
        let filtered = ParameterSetting.filtered([FilteredSetting(filter: "o_proj", value: .number(0))])
        #expect(try Self.merged(try Self.plan("passthrough", base: nil, models: [x], model: [["scale": filtered]])) == x)
        let e = Self.failure(try Self.plan("passthrough", base: nil, models: [x, x]))
        #expect(e?.message.contains("exactly one model") == true)
    }

    // MARK: arcee_fusion

    @Test func arceeFusionTakesOnlyOutstandingChanges() throws {
        let n = 64
        let base = Self.normals(n, seed: 5, scale: 0.1)
        var p = base
        for k in 0..<n { p[k] += 0.001 * Float(k % 7 + 1) }  // small changes everywhere
        p[10] += 2                                          // one outlier
        let r = try Self.merged(try Self.plan("arcee_fusion", base: base, models: [p]))
        #expect(r[10] == base[10] + (p[10] - base[10]))
        #expect(r.indices.filter { r[$0] != base[$0] } == [10])
        // Changes in a few entries only: the quartiles are 0, so is the threshold, and every entry is taken from p.
        var sparse = base
        sparse[3] += 0.5
        sparse[40] -= 0.25
        let s = try Self.merged(try Self.plan("arcee_fusion", base: base, models: [sparse]))
        #expect(s.indices.allSatisfy { s[$0] == base[$0] + (sparse[$0] - base[$0]) })
        #expect(Self.failure(try Self.plan("arcee_fusion", base: base, models: [p, sparse]))?.message.contains("exactly two") == true)
    }

    // MARK: ram

    @Test func ramKeepsUniqueChangesAndAveragesShared() throws {
        let base: [Float] = [1, 1, 1, 1, 1]
        let a: [Float] = [2, 1, 3, 1.000001, 1]
        let b: [Float] = [1, 5, 5, 1, 1]
        let r = try Self.merged(try Self.plan("ram", base: base, models: [a, b]))
        // Unique: whole; shared: mean of the two changes (2 and 4 → 3); at most epsilon: dropped.
        #expect(r == [2, 5, 4, 1, 1])
        let wide = try Self.merged(try Self.plan("ram", base: base, models: [a, b], global: ["epsilon": .number(2.5)]))
        #expect(wide == [1, 5, 5, 1, 1], "only |τ| > 2.5 counts: b's changes, each unique")
        // ramplus_tl: model a has 1 shared and 1 unique entry (ρ = 1), b 1 shared and 1 unique (ρ = 1):
        // λ = 1 + 0.1 · min(1, 0.2) = 1.02 on unique entries.
        let plus = try Self.merged(try Self.plan("ramplus_tl", base: base, models: [a, b]))
        let lambda = 1 + Float(0.1) * min(Float(1), Float(0.2))
        #expect(plus[0] == 1 + lambda && plus[1] == 1 + 4 * lambda && plus[2] == 4)
    }

    // MARK: sce

    @Test func sceSelectEraseAndWeights() throws {
        let base: [Float] = [0, 0, 0, 0]
        // Opposite signs in entry 0: the larger-magnitude sum (+) wins, only model 0's entry is kept.
        let a: [Float] = [3, 1, 0, 2], b: [Float] = [-1, 1, 0, 2]
        let r = try Self.merged(try Self.plan("sce", base: base, models: [a, b]))
        #expect(abs(r[0] - 3) < 1e-6 && r[2] == 0)
        #expect(abs(r[1] - 1) < 1e-6 && abs(r[3] - 2) < 1e-6, "agreeing equal entries stay")
        // select_topk 0 keeps nothing; one model with select_topk < 1 has zero variance everywhere: the base.
        #expect(try Self.merged(try Self.plan("sce", base: base, models: [a, b], global: ["select_topk": .number(0)])) == base)
        #expect(try Self.merged(try Self.plan("sce", base: base, models: [a], global: ["select_topk": .number(0.5)])) == base)
        // With select_topk 1, one model gives itself.
        #expect(try Self.merged(try Self.plan("sce", base: base, models: [a])) == a)
        // select_topk 0.5 of the 2 entries with non-zero variance (entries 1 and 3 agree: variance 0): ⌊2·0.5⌋ = 1
        // entry, the one of largest variance (entry 0, variance 4; entry 2 has 0.25).
        let c: [Float] = [3, 1, 1, 2], d: [Float] = [-1, 1, 0, 2]
        let s = try Self.merged(try Self.plan("sce", base: base, models: [c, d], global: ["select_topk": .number(0.5)]))
        #expect(abs(s[0] - 3) < 1e-6 && s[1] == 0 && s[2] == 0 && s[3] == 0)
    }

    @Test func sceWeightsByMeanSquareOrEquallyWhenTiny() throws {
        // Entry 0 agrees (both +), so the merge there is (w_a·a + w_b·b)/(w_a + w_b) with w ∝ mean square.
        let base: [Float] = [0, 0]
        let a: [Float] = [1, 3], b: [Float] = [3, 1]   // equal mean squares: equal weights → mean 2
        let r = try Self.merged(try Self.plan("sce", base: base, models: [a, b]))
        #expect(abs(r[0] - 2) < 1e-6 && abs(r[1] - 2) < 1e-6)
        let c: [Float] = [1, 0], d: [Float] = [3, 3]    // mean squares 0.5 and 9: entry 0 = (0.5·1 + 9·3)/9.5
        let s = try Self.merged(try Self.plan("sce", base: base, models: [c, d]))
        #expect(abs(s[0] - Float(27.5 / 9.5)) < 1e-6)
        // Task vectors with Σ mean squares < 1e-6 fall back to equal weights: entry 0 is the plain mean.
        let e: [Float] = [1e-4, 0], f: [Float] = [3e-4, 3e-4]
        let t = try Self.merged(try Self.plan("sce", base: base, models: [e, f]))
        #expect(abs(t[0] - 2e-4) < 1e-10)
    }

    // MARK: della

    @Test func dellaEpsilonAndDensityBoundsAreOneLine() throws {
        let base = [Float](repeating: 0, count: 8), m = Self.normals(8, seed: 1)
        for (method, density, epsilon) in [("della", 0.9, nil), ("della", 0.1, nil), ("della_linear", 0.5, 0.5), ("della", 0.3, 0.3)] as [(String, Double, Double?)] {
            var p: [String: ParameterSetting] = ["weight": .number(1), "density": .number(density)]
            if let epsilon { p["epsilon"] = .number(epsilon) }
            let e = Self.failure(try Self.plan(method, base: base, models: [m], model: [p]))
            #expect(e?.code == .invalidParameter)
            #expect(e?.message.contains("density ± epsilon") == true, "\(e?.message ?? "")")
        }
        let e = Self.failure(try Self.plan("della", base: base, models: [m], model: [["density": .number(1.5)]]))
        #expect(e?.message.contains("density 1.5") == true)
        // density 1 drops nothing whatever epsilon is (mergekit checks epsilon only when it drops).
        let tiesLike = try Self.merged(try Self.plan("della", base: base, models: [m], model: [["density": .number(1), "epsilon": .number(0.5)]]))
        #expect(tiesLike == m)
    }

    @Test func dellaKeepsLargeEntriesMoreOftenAndRescales() throws {
        let rows = 200, cols = 500, n = rows * cols
        let tau = Self.normals(n, seed: 9)
        let base = [Float](repeating: 0, count: n)
        func run(_ method: String, seed: Double, rescale: Bool = true) throws -> [Float] {
            try Self.merged(try Self.plan(method, base: base, models: [tau], shape: [rows, cols],
                                          global: ["seed": .number(seed), "rescale": .bool(rescale)],
                                          model: [["weight": .number(1), "density": .number(0.4), "epsilon": .number(0.3)]]))
        }
        let out = try run("della_linear", seed: 3, rescale: false)
        let kept = out.indices.filter { out[$0] != 0 }
        #expect(kept.allSatisfy { out[$0] == tau[$0] }, "without rescale survivors are unchanged")
        #expect(abs(Double(kept.count) / Double(n) - 0.4) < 0.01)
        // Within each row, keep probability runs from 0.1 (smallest) to 0.7 (largest magnitude).
        var small = 0, large = 0
        for r in 0..<rows {
            let row = (0..<cols).map { r * cols + $0 }.sorted { abs(tau[$0]) < abs(tau[$1]) }
            small += row.prefix(50).filter { out[$0] != 0 }.count
            large += row.suffix(50).filter { out[$0] != 0 }.count
        }
        #expect(abs(Double(small) / Double(rows * 50) - 0.13) < 0.03, "bottom tenth kept ≈ 0.13")
        #expect(abs(Double(large) / Double(rows * 50) - 0.67) < 0.03, "top tenth kept ≈ 0.67")
        // rescale (default): the L1 norm of the task vector is kept; same seed, same mask; another seed, another.
        let scaled = try run("della_linear", seed: 3)
        let l1 = tau.reduce(0.0) { $0 + Double(abs($1)) }, l1Out = scaled.reduce(0.0) { $0 + Double(abs($1)) }
        #expect(abs(l1Out - l1) / l1 < 1e-5)
        #expect(scaled.indices.filter { scaled[$0] != 0 } == kept)
        #expect(try run("della_linear", seed: 4) != scaled)
        #expect(try run("della", seed: 3) == scaled, "one model: the sign election keeps every survivor, normalize divides by 1")
    }

    @Test func dellaRanksAlongDimensionOne() throws {
        // A [2, 3, 4] tensor: mergekit ranks along dimension 1 (3 entries), so within each (i, ·, k) column the
        // largest-magnitude entry has probability density + ε = 0.9 and the smallest density − ε = 0.1.
        var rng = TestRNG(state: 2)
        let n = 2 * 3 * 4, trials = 400
        var largestKept = 0, smallestKept = 0
        for s in 0..<trials {
            let tau = (0..<n).map { _ in rng.normal() }
            let out = try Self.merged(try Self.plan("della_linear", base: [Float](repeating: 0, count: n), models: [tau], shape: [2, 3, 4],
                                                    global: ["seed": .number(Double(s)), "rescale": .bool(false)],
                                                    model: [["density": .number(0.5), "epsilon": .number(0.4)]]))
            for i in 0..<2 { for k in 0..<4 {
                let column = (0..<3).map { (i * 3 + $0) * 4 + k }.sorted { abs(tau[$0]) < abs(tau[$1]) }
                if out[column[2]] != 0 { largestKept += 1 }
                if out[column[0]] != 0 { smallestKept += 1 }
            } }
        }
        let total = Double(trials * 8)
        #expect(abs(Double(largestKept) / total - 0.9) < 0.03)
        #expect(abs(Double(smallestKept) / total - 0.1) < 0.03)
    }

    @Test func dellaProvenanceRecordsSeedAndGenerator() throws {
        let plan = try Self.plan("della", base: [0, 0, 0, 0], models: [[1, 2, 3, 4]], global: ["seed": .number(77)],
                                 model: [["density": .number(0.5), "epsilon": .number(0.2)]])
        let summary = try MergeDriver.run(plan) { _, _ in }
        let meta = Dictionary(try MergeProvenance.metadata(plan: plan, summary: summary), uniquingKeysWith: { a, _ in a })
        #expect(meta["tessera.merge.seed"] == "77")
        #expect(meta["tessera.merge.rng"] == DropRNG.generatorName)
    }
}
