import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraTestSupport

@Suite struct DareTests {
    static let n = 100_000
    static func plan(_ method: String, seed: Double, density: Double, global: [String: ParameterSetting] = [:]) throws -> (MergePlan, [Float]) {
        var rng = TestRNG(state: 3)
        let tau = (0..<n).map { _ in rng.normal() }
        let base = try MemorySource("base", floats: [("w", [n], [Float](repeating: 0, count: n)), ("v", [10], [Float](repeating: 0, count: 10))])
        let m1 = try MemorySource("m1", floats: [("w", [n], tau), ("v", [10], Array(tau[0..<10]))])
        var params = global
        params["seed"] = .number(seed)
        return (MergePlan(method: method, base: MergeInputModel(name: "base", source: base),
                          models: [MergeInputModel(name: "m1", source: m1, parameters: ["weight": .number(1), "density": .number(density)])],
                          parameters: params), tau)
    }

    @Test func sameSeedSameOutputDifferentSeedDifferent() throws {
        for method in ["dare_linear", "dare_ties"] {
            let a = try runMerge(try Self.plan(method, seed: 42, density: 0.5).0)
            let b = try runMerge(try Self.plan(method, seed: 42, density: 0.5).0)
            let c = try runMerge(try Self.plan(method, seed: 43, density: 0.5).0)
            #expect(a["w"]!.bytes == b["w"]!.bytes)
            #expect(a["w"]!.bytes != c["w"]!.bytes)
        }
    }

    @Test(arguments: [0.1, 0.5, 0.9])
    func keptFractionAndRescale(density: Double) throws {
        // rescale_mode density: survivors are exactly τ / density.
        let (plan, tau) = try Self.plan("dare_linear", seed: 7, density: density, global: ["rescale_mode": .string("density")])
        let out = try runMerge(plan)["w"]!.floats()
        let kept = out.indices.filter { out[$0] != 0 }
        let fraction = Double(kept.count) / Double(Self.n)
        #expect(abs(fraction - density) < 0.01, "kept \(fraction) for density \(density)")
        #expect(kept.allSatisfy { out[$0] == tau[$0] / Float(density) })
        // Default (mergekit 0.1.5): the L1 norm of the task vector is preserved.
        let (plan2, _) = try Self.plan("dare_linear", seed: 7, density: density)
        let out2 = try runMerge(plan2)["w"]!.floats()
        let l1 = tau.reduce(0.0) { $0 + Double(abs($1)) }, l1Out = out2.reduce(0.0) { $0 + Double(abs($1)) }
        #expect(abs(l1Out - l1) / l1 < 1e-5)
        #expect(out2.indices.filter { out2[$0] != 0 } == kept, "same seed, same mask")
    }

    @Test func provenanceRecordsSeedAndGenerator() throws {
        let (plan, _) = try Self.plan("dare_ties", seed: 1234, density: 0.5)
        let summary = try MergeDriver.run(plan) { _, _ in }
        let meta = try MergeProvenance.metadata(plan: plan, summary: summary)
        let dict = Dictionary(meta, uniquingKeysWith: { a, _ in a })
        #expect(dict["tessera.merge.seed"] == "1234")
        #expect(dict["tessera.merge.rng"] == DropRNG.generatorName)
    }
}
