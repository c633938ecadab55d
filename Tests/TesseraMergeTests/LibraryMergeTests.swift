import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraTestSupport

/// Merged checkouts of a library on ΔW against PEFT 0.21.2's `add_weighted_adapter` and mergekit 0.1.5's TIES
/// (Tests/Fixtures/reference/merge/, vendored from the project's shared reference set; see Tests/Fixtures/SOURCES.md).
@Suite struct LibraryMergeTests {
    typealias Spec = LibraryFixtures.ModuleSpec

    /// The three experts of inputs/lora_experts.safetensors (r 4, lora_alpha 8: scaling 2.0, as PEFT's).
    static func peftExperts() throws -> [AdapterFolder] {
        let f = try ReferenceData.file("inputs/lora_experts.safetensors")
        return try (0..<3).map { e in
            try LibraryFixtures.expert("expert\(e)", [Spec(name: "layer", a: try f.floats("expert\(e).lora_A"), b: try f.floats("expert\(e).lora_B"),
                                                           rank: 4, inFeatures: 16, outFeatures: 16)], alpha: 8)
        }
    }

    static func weights(_ out: AdapterOutput) throws -> AdapterFolder {
        try AdapterFolder(configBytes: out.configBytes, tensors: MemoryTensors(out), name: "merged")
    }

    /// The weighted average with weights 0.5, 0.3, 0.2 is PEFT's exact `cat` ΔW (to 1e-6); weights 1, 0.6, 0.4 are
    /// normalised to the same; without normalisation 0.5, 0.3, 0.2 give it too (they sum to 1) and 1, 0.6, 0.4 twice
    /// it. One expert with weight 1 is PEFT's `source.e{i}` ΔW (the scaling is applied).
    @Test func weightedAverageIsPEFTsExactCombination() throws {
        let ref = try ReferenceData.file("peft/add_weighted_adapter.safetensors")
        let expected = try ref.floats("cat_w0p5_0p3_0p2.delta_weight")
        let experts = try Self.peftExperts()
        for (w, normalize, factor) in [([0.5, 0.3, 0.2], true, Float(1)), ([1, 0.6, 0.4], true, 1), ([0.5, 0.3, 0.2], false, 1), ([1, 0.6, 0.4], false, 2)] {
            let merge = try LibraryMerge(experts: experts, options: .init(method: .weightedAverage, weights: w, normalize: normalize))
            #expect(merge.modules.map(\.name) == ["layer"])
            let got = try merge.mergedDelta(merge.modules[0])
            #expect(relativeError(got, expected.map { $0 * factor }) < 1e-6, "\(w) normalize \(normalize)")
        }
        for e in 0..<3 {
            let one = try LibraryMerge(experts: [experts[e]], options: .init(method: .weightedAverage, weights: [1]))
            #expect(relativeError(try one.mergedDelta(one.modules[0]), try ref.floats("source.e\(e).delta_weight")) < 1e-6)
        }
    }

    /// The average is the mean of PEFT's per-expert ΔW.
    @Test func averageIsTheMeanOfTheExpertsDeltas() throws {
        let ref = try ReferenceData.file("peft/add_weighted_adapter.safetensors")
        let sources = try (0..<3).map { try ref.floats("source.e\($0).delta_weight") }
        let mean = (0..<256).map { k in (sources[0][k] + sources[1][k] + sources[2][k]) / 3 }
        let merge = try LibraryMerge(experts: try Self.peftExperts(), options: .init(method: .average))
        #expect(relativeError(try merge.mergedDelta(merge.modules[0]), mean) < 1e-6)
    }

    /// The rank-4 adapter of the weighted average is PEFT's `svd` result: same ΔW (1e-5, float32 SVDs on both sides;
    /// measured below 1e-6), r = lora_alpha = 4 (scaling 1), and it reads back as a PEFT adapter.
    @Test func rankRAdapterIsPEFTsSVD() throws {
        let ref = try ReferenceData.file("peft/add_weighted_adapter.safetensors")
        let merge = try LibraryMerge(experts: try Self.peftExperts(), options: .init(method: .weightedAverage, weights: [0.5, 0.3, 0.2]))
        let out = try merge.adapter(rank: 4)
        let back = try Self.weights(out)
        #expect(back.adapter.config.rank == 4 && back.adapter.config.alpha == 4)
        #expect(out.config["target_modules"] == .array([.string("layer")]))
        let m = try #require(back.adapter.modules.first)
        #expect(back.adapter.modules.count == 1 && m.name == "layer" && m.scaling == 1 && m.rank == 4)
        let (a, b) = try back.factors(m)
        var dW = [Float](repeating: 0, count: 256)
        for o in 0..<16 { for r in 0..<4 { for i in 0..<16 { dW[o * 16 + i] += b[o * 4 + r] * a[r * 16 + i] } } }
        #expect(relativeError(dW, try ref.floats("svd_w0p5_0p3_0p2.delta_weight")) < 1e-5)
        // Rank 12 holds the whole (rank-12) ΔW: the exact cat result.
        let full = try Self.weights(try merge.adapter(rank: 12))
        let (a12, b12) = try full.factors(full.adapter.modules[0])
        var exact = [Float](repeating: 0, count: 256)
        for o in 0..<16 { for r in 0..<12 { for i in 0..<16 { exact[o * 16 + i] += b12[o * 12 + r] * a12[r * 16 + i] } } }
        #expect(relativeError(exact, try ref.floats("cat_w0p5_0p3_0p2.delta_weight")) < 1e-5)
    }

    /// The full checkpoint is the base plus the merged ΔW, tensor by tensor: the adapted weight equals
    /// W0 + PEFT's cat ΔW (1e-6), other tensors are the base's bytes.
    @Test func checkpointAddsTheMergedDelta() throws {
        let inputs = try ReferenceData.file("inputs/lora_experts.safetensors")
        let ref = try ReferenceData.file("peft/add_weighted_adapter.safetensors")
        let w0 = try inputs.floats("base.weight"), delta = try ref.floats("cat_w0p5_0p3_0p2.delta_weight")
        let base = FloatTensors([("layer.weight", w0, [16, 16]), ("layer.bias", [Float](repeating: 0.25, count: 16), [16])])
        let merge = try LibraryMerge(experts: try Self.peftExperts(), options: .init(method: .weightedAverage, weights: [0.5, 0.3, 0.2]))
        let source = try merge.checkpoint(base: base)
        #expect(source.tensorNames == ["layer.weight", "layer.bias"])
        #expect(relativeError(try source.floats("layer.weight"), zip(w0, delta).map { $0 + $1 }) < 1e-6)
        #expect(try source.rawTensor("layer.bias").bytes == base.rawTensor("layer.bias").bytes)
    }

    /// TIES on the experts' ΔW is mergekit's TIES of the models base + ΔWᵢ: experts whose ΔW is exactly
    /// τᵢ = ftᵢ − base (full-rank factors, one of them the identity) reproduce mergekit's ties_density0.5 and
    /// ties_density0.2 outputs for both weights (1e-6), through the checkpoint source.
    @Test func tiesIsMergekitsTiesOnDeltas() throws {
        let base = try ReferenceData.file("inputs/base.safetensors")
        let fts = try (1...3).map { try ReferenceData.file("inputs/ft\($0).safetensors") }
        let b0 = try base.floats("layer.weight"), p0 = try base.floats("proj.weight")
        var eye16 = [Float](repeating: 0, count: 256), eye8 = [Float](repeating: 0, count: 64)
        for i in 0..<16 { eye16[i * 17] = 1 }
        for i in 0..<8 { eye8[i * 9] = 1 }
        let experts = try fts.enumerated().map { i, ft in
            let tl = zip(try ft.floats("layer.weight"), b0).map { $0 - $1 }, tp = zip(try ft.floats("proj.weight"), p0).map { $0 - $1 }
            return try LibraryFixtures.expert("ft\(i + 1)", [Spec(name: "layer", a: eye16, b: tl, rank: 16, inFeatures: 16, outFeatures: 16),
                                                            Spec(name: "proj", a: tp, b: eye8, rank: 8, inFeatures: 32, outFeatures: 8)], alpha: 16)
        }
        #expect(experts[0].adapter.modules.map(\.scaling) == [1, 1])
        for density in [0.5, 0.2] {
            let reference = try ReferenceData.file("mergekit/ties_density\(density).safetensors")
            let merge = try LibraryMerge(experts: experts, options: .init(method: .ties, density: density))
            let source = try merge.checkpoint(base: base)
            for name in ["layer.weight", "proj.weight"] {
                let err = relativeError(try source.floats(name), try reference.floats(name))
                #expect(err < 1e-6, "density \(density) \(name): \(err)")
            }
            // A wrong method is far off: the plain average differs from TIES by much more than the tolerance.
            let average = try LibraryMerge(experts: experts, options: .init(method: .average)).checkpoint(base: base)
            #expect(relativeError(try average.floats("layer.weight"), try reference.floats("layer.weight")) > 1e-3)
        }
    }

    /// A module only some experts adapt counts as ΔW = 0 for the others: the average of a module one of two experts
    /// has is half its ΔW; TIES keeps that expert's trimmed ΔW (the zeros never agree, nor count in the divisor).
    @Test func absentModulesCountAsZero() throws {
        var rng = TestRNG(state: 3)
        let q0 = Spec(name: "m.q", a: LibraryFixtures.random(2 * 6, &rng), b: LibraryFixtures.random(5 * 2, &rng), rank: 2, inFeatures: 6, outFeatures: 5)
        let q1 = Spec(name: "m.q", a: LibraryFixtures.random(2 * 6, &rng), b: LibraryFixtures.random(5 * 2, &rng), rank: 2, inFeatures: 6, outFeatures: 5)
        let v1 = Spec(name: "m.v", a: LibraryFixtures.random(2 * 6, &rng), b: LibraryFixtures.random(4 * 2, &rng), rank: 2, inFeatures: 6, outFeatures: 4)
        let e0 = try LibraryFixtures.expert("e0", [q0], alpha: 4), e1 = try LibraryFixtures.expert("e1", [q1, v1], alpha: 4)
        // ΔW = 2·B·A in double.
        var dv = [Double](repeating: 0, count: 24)
        for o in 0..<4 { for r in 0..<2 { for i in 0..<6 { dv[o * 6 + i] += 2 * Double(v1.b[o * 2 + r]) * Double(v1.a[r * 6 + i]) } } }
        let avg = try LibraryMerge(experts: [e0, e1], options: .init(method: .average))
        #expect(avg.modules.map(\.name) == ["m.q", "m.v"])
        let v = try avg.mergedDelta(avg.modules[1])
        for k in 0..<24 { #expect(abs(Double(v[k]) - dv[k] / 2) < 1e-5) }
        let ties = try LibraryMerge(experts: [e0, e1], options: .init(method: .ties, density: 0.5))
        let tv = try ties.mergedDelta(ties.modules[1])
        let kept = dv.indices.sorted { abs(dv[$0]) > abs(dv[$1]) }.prefix(12)
        for k in 0..<24 { #expect(abs(Double(tv[k]) - (kept.contains(k) ? dv[k] : 0)) < 1e-5, "entry \(k)") }
    }

    /// fan_in_fan_out experts (GPT-2's Conv1D: the base stores ΔW transposed): the checkpoint adds (B·A)ᵀ, and the
    /// full-rank adapter, applied by the existing LoRAAppliedSource (PEFT's merge_and_unload), gives the same
    /// checkpoint; so does it for TIES, whose trim works in the base's layout.
    @Test func transposedLayersAndAdapterRoundTrip() throws {
        var rng = TestRNG(state: 9)
        for fan in [false, true] {
            let experts = try (0..<3).map { e in
                try LibraryFixtures.expert("e\(e)", [Spec(name: "h.attn", a: LibraryFixtures.random(2 * 6, &rng), b: LibraryFixtures.random(4 * 2, &rng),
                                                          rank: 2, inFeatures: 6, outFeatures: 4)], alpha: 4, fanInFanOut: fan)
            }
            let shape = fan ? [6, 4] : [4, 6]
            let base = FloatTensors([("h.attn.weight", LibraryFixtures.random(24, &rng), shape)])
            for options in [LibraryMerge.Options(method: .average), .init(method: .ties, weights: [1, 0.5, 2], density: 0.5)] {
                let merge = try LibraryMerge(experts: experts, options: options)
                #expect(merge.modules[0].deltaShape == shape)
                let direct = try merge.checkpoint(base: base).floats("h.attn.weight")
                let out = try merge.adapter(rank: 4)
                let applied = try LoRAAppliedSource(base: base, adapter: MemoryTensors(out), adapterConfig: out.configBytes, name: "applied")
                #expect(relativeError(try applied.floats("h.attn.weight"), direct) < 1e-5, "fan_in_fan_out \(fan) \(options.method)")
            }
        }
    }

    /// Bad inputs are one-line errors, before any work.
    @Test func refusesBadInputs() throws {
        let experts = try Self.peftExperts()
        func fails(_ what: String, _ words: String, _ body: () throws -> Void) {
            do {
                try body()
                Issue.record("\(what): no error")
            } catch let e as TesseraError {
                #expect(e.message.contains(words), "\(what): \(e.message)")
                #expect(!e.description.contains("\n"))
            } catch { Issue.record("\(what): \(error)") }
        }
        fails("none", "at least one expert") { _ = try LibraryMerge(experts: [], options: .init(method: .average)) }
        fails("average with weights", "average takes no weights") { _ = try LibraryMerge(experts: experts, options: .init(method: .average, weights: [1, 1, 1])) }
        fails("weighted without", "needs one weight per expert") { _ = try LibraryMerge(experts: experts, options: .init(method: .weightedAverage)) }
        fails("count", "2 weights for 3 experts") { _ = try LibraryMerge(experts: experts, options: .init(method: .weightedAverage, weights: [1, 1])) }
        fails("nan weight", "finite") { _ = try LibraryMerge(experts: experts, options: .init(method: .ties, weights: [1, .nan, 1])) }
        fails("zero sum", "sum to 0") { _ = try LibraryMerge(experts: experts, options: .init(method: .weightedAverage, weights: [1, -1, 0])) }
        for d in [0, -0.5, 1.5, .nan] {
            fails("density \(d)", "density") { _ = try LibraryMerge(experts: experts, options: .init(method: .ties, density: d)) }
        }
        fails("lambda", "lambda") { _ = try LibraryMerge(experts: experts, options: .init(method: .ties, lambda: .infinity)) }
        var rng = TestRNG(state: 1)
        let wide = try LibraryFixtures.expert("wide", [Spec(name: "layer", a: LibraryFixtures.random(4 * 8, &rng), b: LibraryFixtures.random(16 * 4, &rng),
                                                            rank: 4, inFeatures: 8, outFeatures: 16)], alpha: 8)
        fails("shape", "wide: module 'layer' has ΔW [16, 8], but expert0's is [16, 16]") {
            _ = try LibraryMerge(experts: experts + [wide], options: .init(method: .average))
        }
        let fan = try LibraryFixtures.expert("fan", [Spec(name: "layer", a: LibraryFixtures.random(64, &rng), b: LibraryFixtures.random(64, &rng),
                                                          rank: 4, inFeatures: 16, outFeatures: 16)], alpha: 8, fanInFanOut: true)
        fails("fan_in_fan_out", "disagree on fan_in_fan_out") { _ = try LibraryMerge(experts: experts + [fan], options: .init(method: .average)) }
        let saved = try LibraryFixtures.expert("saved", [Spec(name: "layer", a: LibraryFixtures.random(64, &rng), b: LibraryFixtures.random(64, &rng),
                                                              rank: 4, inFeatures: 16, outFeatures: 16)], alpha: 8,
                                               extraTensors: [(LoRAAdapter.peftPrefix + "score.weight", [1, 2], [1, 2])])
        fails("modules_to_save", "saves 'base_model.model.score.weight' whole") { _ = try LibraryMerge(experts: experts + [saved], options: .init(method: .average)) }
        let merge = try LibraryMerge(experts: experts, options: .init(method: .average))
        fails("rank 0", "rank 0 is outside 1...16") { _ = try merge.adapter(rank: 0) }
        fails("rank 17", "rank 17 is outside 1...16") { _ = try merge.adapter(rank: 17) }
        fails("rank huge", "outside") { _ = try merge.adapter(rank: Int.max) }
        fails("no target", "which the base model does not have") { _ = try merge.checkpoint(base: FloatTensors([("other.weight", [1], [1])])) }
        fails("base shape", "ΔW of 'layer.weight' is [16, 16] but the weight is [8, 32]") {
            _ = try merge.checkpoint(base: FloatTensors([("layer.weight", [Float](repeating: 0, count: 256), [8, 32])]))
        }
        // A non-finite factor does not crash: the merged ΔW is refused where it is written.
        var a = LibraryFixtures.random(64, &rng)
        a[3] = .infinity
        let inf = try LibraryFixtures.expert("inf", [Spec(name: "layer", a: a, b: LibraryFixtures.random(64, &rng), rank: 4, inFeatures: 16, outFeatures: 16)], alpha: 8)
        let bad = try LibraryMerge(experts: experts + [inf], options: .init(method: .average))
        let base = FloatTensors([("layer.weight", [Float](repeating: 0, count: 256), [16, 16])])
        fails("inf checkpoint", "overflows") { _ = try bad.checkpoint(base: base).rawTensor("layer.weight") }
        // LAPACK reports the infinite ΔW as not converging (or the writer refuses its non-finite factors).
        do {
            try bad.adapter(rank: 4).write { _, _ in }
            Issue.record("inf adapter: no error")
        } catch let e as TesseraError {
            #expect(e.message.contains("did not converge") || e.message.contains("not finite"), "\(e.message)")
        }
    }
}
