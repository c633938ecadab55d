import Foundation
import Testing
import TesseraTestSupport

/// mergekit's own example configs (its examples/*.yml), run unchanged by `tessera merge --config` from a folder where
/// every model they name is a small local Hugging Face folder of that name (Tests/Fixtures/mergekit-examples, made by
/// scripts/make_mergekit_example_fixtures.py, which also ran mergekit 0.1.5 on them). Each config either merges like
/// mergekit or is refused in one line that names what is not supported.
@Suite struct MergekitExamplesTests {
    static let fixtures = PackagePaths.fixtures + "/mergekit-examples"

    /// What the script recorded: "merged" or "refused" per config, and the feature a refusal must name.
    static let outcomes: [String: (tessera: String, names: String?)] = [
        "arcee_fusion.yml": ("merged", nil),
        "bio-merge.yml": ("merged", nil),
        "gradient-slerp.yml": ("merged", nil),
        "linear.yml": ("merged", nil),
        "orcamini-platy-44layer.yml": ("merged", nil),
        "ties.yml": ("merged", nil),
    ]

    /// Configs that merge but do not give mergekit's tensors yet, with the reason; their float32 run must match
    /// (`exampleInFloat32MatchesMergekit`).
    /// (arcee_fusion.yml left it when tessera computed its gate in the config's bfloat16 and wrote the float32 result.)
    static let knownDifferences: [String: String] = [:]

    @Test func theFixturesListEveryExample() throws {
        let configs = Checkpoints.list(Self.fixtures + "/examples")
        #expect(Set(configs) == Set(Self.outcomes.keys))
        let recorded = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/outcomes.json"))) as? [String: Any])
        let byConfig = try #require(recorded["configs"] as? [String: [String: Any]])
        for (config, outcome) in Self.outcomes { #expect(byConfig[config]?["tessera"] as? String == outcome.tessera, "\(config)") }
        // transformers loaded the folders tessera wrote (sharded, through the index) and mergekit's, and their logits
        // agree: to float32 rounding for the linear merge, to the float16 differences above for the TIES ones.
        for (config, outcome) in Self.outcomes where outcome.tessera == "merged" {
            let row = try #require(byConfig[config])
            #expect((row["tessera_files"] as? [String])?.contains("model.safetensors.index.json") == true, "\(config)")
            let diff = try #require(row["transformers_max_logit_diff"] as? Double, "\(config): transformers did not load the output")
            // The slices examples (SLERP with gradients, passthrough stacking) match mergekit's exactly.
            let exact = ["gradient-slerp.yml", "orcamini-platy-44layer.yml"].contains(config)
            #expect(diff <= (exact ? 0 : config == "linear.yml" ? 1e-3 : 0.5), "\(config): logits differ by \(diff)")
        }
    }

    @Test(arguments: outcomes.keys.sorted())
    func exampleMergesLikeMergekitOrNamesWhatIsNotSupported(config: String) throws {
        let s = try Sandbox()
        let outcome = try #require(Self.outcomes[config])
        let r = try s.run("\"$T\" merge --config examples/\(config) -o \"\(s.path("out"))\"", in: Self.fixtures, check: false)
        guard outcome.tessera == "merged" else {
            #expect(r.status != 0 && r.stderr.hasPrefix("tessera: ") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
            #expect(r.stderr.contains(outcome.names ?? "?"), "\(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: s.path("out")))
            return
        }
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Checkpoints.list(s.path("out")) == ["README.md", "config.json", "model.safetensors"])
        let card = try String(contentsOfFile: s.path("out/README.md"), encoding: .utf8)
        #expect(card.contains(try String(contentsOfFile: Self.fixtures + "/examples/" + config, encoding: .utf8)), "the card quotes the config")
        let stem = String(config.dropLast(4))
        let got = try Checkpoints.tensors(s.path("out")), expected = try Checkpoints.tensors(Self.fixtures + "/expected/\(stem).safetensors")
        #expect(Set(got.keys) == Set(expected.keys))
        if Self.knownDifferences[config] != nil {
            for (name, e) in expected { #expect(got[name]?.shape == e.shape, "\(name)") }
            return
        }
        // mergekit computes in the config's dtype (float16 here), each torch op rounded to it, and tessera computes
        // the same ops with the same roundings (and keeps the same entries where magnitudes tie at TIES's threshold):
        // every value is mergekit's, bit for bit.
        for (name, e) in expected {
            let g = try #require(got[name])
            #expect(g.dtype == e.dtype && g.shape == e.shape, "\(name)")
            let x = Checkpoints.values(g), y = Checkpoints.values(e)
            let differing = zip(x, y).filter { $0.bitPattern != $1.bitPattern }.count
            #expect(differing == 0, "\(config) \(name): \(differing) of \(y.count) values differ from mergekit's")
        }
    }

    /// A frankenmerge's output has the layers its slices stack, renumbered from 0, and config.json says how many.
    @Test func layerStackingWritesTheLayerCount() throws {
        let s = try Sandbox()
        try s.run("\"$T\" merge --config examples/orcamini-platy-44layer.yml -o \"\(s.path("out"))\"", in: Self.fixtures)
        let config = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: s.path("out/config.json")))) as? [String: Any])
        #expect(config["num_hidden_layers"] as? Int == 44)
        let names = try Checkpoints.tensors(s.path("out")).keys
        #expect(names.contains("model.layers.43.mlp.down_proj.weight") && !names.contains("model.layers.44.mlp.down_proj.weight"))
        #expect(names.count == 3 + 44 * 9)
    }

    /// The same configs computing in float32 on both sides (their dtype line changed): bit for bit mergekit's (ties
    /// at TIES's density threshold resolved as torch's sort resolves them, linear's sums fused as torch's addcmul_),
    /// but for SLERP within 1e-6 of the tensor's largest value: mergekit's slerp runs in numpy float32 (BLAS's dot for
    /// the norms, SLEEF-free libm acos/sin), whose last bits Tessera's float32 path does not replay (its bfloat16 and
    /// float16 results are bit for bit: the test above).
    @Test(arguments: ["arcee_fusion", "bio-merge", "gradient-slerp", "linear", "orcamini-platy-44layer", "ties"])
    func exampleInFloat32MatchesMergekit(stem: String) throws {
        let s = try Sandbox()
        let text = try String(contentsOfFile: Self.fixtures + "/examples/\(stem).yml", encoding: .utf8)
        let variant = text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("dtype:") ? "dtype: float32" : String($0) }.joined(separator: "\n")
        try variant.write(toFile: s.path("config.yml"), atomically: true, encoding: .utf8)
        try s.run("\"$T\" merge --config \"\(s.path("config.yml"))\" -o \"\(s.path("out.safetensors"))\"", in: Self.fixtures)
        let got = try Checkpoints.tensors(s.path("out.safetensors"))
        let expected = try Checkpoints.tensors(Self.fixtures + "/expected/\(stem).float32.safetensors")
        #expect(Set(got.keys) == Set(expected.keys))
        for (name, e) in expected {
            let g = try #require(got[name])
            #expect(g.dtype == "F32" && e.dtype == "F32" && g.shape == e.shape, "\(name)")
            let x = Checkpoints.values(g), y = Checkpoints.values(e)
            let tolerance = stem == "gradient-slerp" ? 1e-6 * Double(y.map { abs($0) }.max() ?? 0) : 0
            let differing = zip(x, y).filter { $0.bitPattern != $1.bitPattern && Double(abs($0 - $1)) > tolerance }.count
            #expect(differing == 0, "\(stem) \(name): \(differing) of \(y.count) values differ from mergekit's")
        }
    }
}
