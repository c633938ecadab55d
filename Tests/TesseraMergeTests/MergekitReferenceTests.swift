import Foundation
import Testing
import TesseraCore
import TesseraMerge

/// Every mergekit output in Tests/Fixtures/reference/merge/mergekit, reproduced by running its YAML config through
/// MergeConfig and the streaming driver.
@Suite struct MergekitReferenceTests {
    static let deterministicConfigs = [
        "linear_uniform", "linear_weighted_0.5_0.3_0.2", "slerp_base_ft1_t0.3", "task_arithmetic_lambda0.5",
        "task_arithmetic_negate_ft1_lambda-1", "ties_density0.2", "ties_density0.5",
    ]

    static func run(_ config: String) throws -> [String: RawTensor] {
        let text = try String(contentsOfFile: ReferenceData.path("mergekit/configs/\(config).yaml"), encoding: .utf8)
        let parsed = try MergeConfig.parse(yaml: text, file: config)
        let plan = try parsed.plan { ref in try SafetensorsFile(path: ReferenceData.path(ref)) }
        return try runMerge(plan)
    }

    @Test(arguments: deterministicConfigs)
    func reproducesMergekit(config: String) throws {
        let out = try Self.run(config)
        let ref = try ReferenceData.file("mergekit/\(config).safetensors")
        #expect(Set(out.keys) == Set(ref.tensorNames))
        for name in ref.tensorNames {
            let expected = try ref.floats(name)
            let got = try #require(out[name])
            #expect(got.dtype == .f32)
            #expect(got.shape == ref.info(name)!.shape)
            let err = relativeError(try got.floats(), expected)
            #expect(err <= 1e-6, "\(config) \(name): relative error \(err)")
        }
    }

    @Test func bf16OutputIsBitIdentical() throws {
        let out = try Self.run("linear_uniform_bf16")
        let ref = try ReferenceData.file("mergekit/linear_uniform_bf16.safetensors")
        for name in ref.tensorNames {
            let expected = try ref.tensor(name)
            let got = try #require(out[name])
            #expect(got.dtype == .bf16)
            #expect(got.bytes == expected.bytes, "\(name): bf16 values differ")
        }
    }

    /// DARE's mask comes from torch's RNG, so its values cannot be reproduced; its structure can. mergekit 0.1.5
    /// rescales each task vector to keep its L1 norm, so every changed entry must be the sum of a sign-agreeing subset
    /// of f_i·τ_i with one factor f_i ≥ 1 per (tensor, model), and about (1 − density)^3 of entries are unchanged.
    @Test func dareTiesStructureMatchesReferenceAndOurs() throws {
        let ref = try ReferenceData.file("mergekit/dare_ties_density0.5_seed42.safetensors")
        let ours = try Self.run("dare_ties_density0.5_seed42")
        let base = try ReferenceData.file("inputs/base.safetensors")
        let fts = try (1...3).map { try ReferenceData.file("inputs/ft\($0).safetensors") }
        for (label, output) in [("reference", { (n: String) in try ref.floats(n) }), ("ours", { (n: String) in try ours[n]!.floats() })] {
            var total = 0, unchanged = 0
            for name in base.tensorNames {
                let b = try base.floats(name)
                let d = try zip(output(name), b).map { Double($0) - Double($1) }
                let taus = try fts.map { try zip($0.floats(name), b).map { Double($0) - Double($1) } }
                total += d.count
                unchanged += d.filter { $0 == 0 }.count
                // The factor is read off entries where one model alone survived: too few of those in a 16-entry bias.
                guard d.count >= 256 else { continue }
                // The factor of model i: the most common ratio d/τ_i over changed entries (entries where it alone survived).
                let factors: [Double] = taus.map { tau in
                    var counts: [Double: Int] = [:]
                    for j in d.indices where d[j] != 0 && tau[j] != 0 { counts[(d[j] / tau[j] * 1e4).rounded() / 1e4, default: 0] += 1 }
                    return counts.max { $0.value < $1.value }!.key
                }
                #expect(factors.allSatisfy { $0 >= 1 }, "\(label) \(name): factors \(factors)")
                var unexplained = 0
                for j in d.indices where d[j] != 0 {
                    var ok = false
                    for subset in 1..<8 {
                        let members = (0..<3).filter { subset & (1 << $0) != 0 }
                        let vals = members.map { factors[$0] * taus[$0][j] }
                        let sameSign = vals.allSatisfy { ($0 > 0) == (vals[0] > 0) && $0 != 0 }
                        if sameSign && abs(vals.reduce(0, +) - d[j]) <= 2e-3 * max(1e-3, abs(d[j])) { ok = true; break }
                    }
                    if !ok { unexplained += 1 }
                }
                #expect(unexplained == 0, "\(label) \(name): \(unexplained) changed entries are not a rescaled agreeing subset")
            }
            let fraction = Double(unchanged) / Double(total)
            #expect(abs(fraction - 0.125) < 0.06, "\(label): unchanged fraction \(fraction), expected about (1 - 0.5)^3")
        }
    }

    /// A filter list varies density by tensor name: layer.* tensors must equal the density-0.2 reference and the others
    /// the density-0.5 reference.
    @Test func filterListParametersSelectPerTensor() throws {
        let yaml = """
        merge_method: ties
        base_model: inputs/base.safetensors
        models:
          - model: inputs/ft1.safetensors
            parameters: {weight: 1.0, density: [{filter: "layer.", value: 0.2}, {value: 0.5}]}
          - model: inputs/ft2.safetensors
            parameters: {weight: 1.0, density: [{filter: "layer.", value: 0.2}, {value: 0.5}]}
          - model: inputs/ft3.safetensors
            parameters: {weight: 1.0, density: [{filter: "layer.", value: 0.2}, {value: 0.5}]}
        dtype: float32
        """
        let plan = try MergeConfig.parse(yaml: yaml).plan { try SafetensorsFile(path: ReferenceData.path($0)) }
        let out = try runMerge(plan)
        let r02 = try ReferenceData.file("mergekit/ties_density0.2.safetensors")
        let r05 = try ReferenceData.file("mergekit/ties_density0.5.safetensors")
        for name in r02.tensorNames {
            let ref = name.hasPrefix("layer.") ? r02 : r05
            #expect(relativeError(try out[name]!.floats(), try ref.floats(name)) <= 1e-6, "\(name)")
        }
    }

    /// The driver's direct float32 read path (pread into float storage) gives the same merge.
    @Test func streamingSourcesReproduceTies() throws {
        let text = try String(contentsOfFile: ReferenceData.path("mergekit/configs/ties_density0.2.yaml"), encoding: .utf8)
        let plan = try MergeConfig.parse(yaml: text).plan { try StreamingSafetensorsSource(path: ReferenceData.path($0)) }
        let out = try runMerge(plan)
        let ref = try ReferenceData.file("mergekit/ties_density0.2.safetensors")
        for name in ref.tensorNames { #expect(relativeError(try out[name]!.floats(), try ref.floats(name)) <= 1e-6) }
    }

    @Test func streamingSourceReadsTheSameTensors() throws {
        let path = ReferenceData.path("inputs/ft1.safetensors")
        let mapped = try SafetensorsFile(path: path)
        let streamed = try StreamingSafetensorsSource(path: path)
        #expect(mapped.tensorNames == streamed.tensorNames)
        for name in mapped.tensorNames {
            #expect(try mapped.rawTensor(name).bytes == streamed.rawTensor(name).bytes)
        }
    }
}
