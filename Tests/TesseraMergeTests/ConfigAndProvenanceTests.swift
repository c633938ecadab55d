import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraTestSupport

@Suite struct ConfigTests {
    @Test func parsesEveryReferenceConfig() throws {
        let dir = ReferenceData.path("mergekit/configs")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count == 9)
        for f in files {
            let c = try MergeConfig.parse(yaml: try String(contentsOfFile: dir + "/" + f, encoding: .utf8), file: f)
            #expect(f.hasPrefix(c.method), "\(f): method \(c.method)")
            #expect(!c.models.isEmpty)
        }
        let slerp = try MergeConfig.parse(yaml: try String(contentsOfFile: dir + "/slerp_base_ft1_t0.3.yaml", encoding: .utf8))
        #expect(slerp.parameters["t"] == .number(0.3))
        #expect(slerp.baseModel == "inputs/base.safetensors")
        let bf = try MergeConfig.parse(yaml: try String(contentsOfFile: dir + "/linear_uniform_bf16.yaml", encoding: .utf8))
        #expect(bf.dtype == .bf16)
    }

    /// mergekit's `modules:` for the one module Tessera's architectures have (`default`): the models: or slices:
    /// config it holds, the module's parameters between the config's and the slices'/models' own.
    @Test func theDefaultModuleIsItsModelsOrSlices() throws {
        let modules = try MergeConfig.parse(yaml: """
        merge_method: task_arithmetic
        base_model: base
        modules:
          default:
            models:
              - model: a
                parameters: {weight: 0.6}
              - model: b
            parameters:
              weight: 0.3
              lambda:
                - filter: mlp
                  value: 0.9
        parameters:
          lambda: 0.5
          normalize: false
        dtype: float32
        """)
        #expect(modules.models.map(\.model) == ["a", "b"] && modules.slices.isEmpty)
        #expect(modules.models[0].parameters["weight"] == .number(0.6) && modules.models[1].parameters.isEmpty)
        #expect(modules.parameters["weight"] == .number(0.3) && modules.parameters["normalize"] == .bool(false))
        // A module filter that matches nothing for a tensor falls through to the config's value.
        let lambda = try #require(modules.parameters["lambda"])
        #expect(lambda.evaluate(tensor: "model.layers.0.mlp.up_proj.weight", layerPosition: 0) == .number(0.9))
        #expect(lambda.evaluate(tensor: "model.layers.0.self_attn.q_proj.weight", layerPosition: 0) == .number(0.5))

        let slices = try MergeConfig.parse(yaml: """
        merge_method: passthrough
        modules:
          default:
            slices:
              - sources:
                  - model: a
                    layer_range: [0, 2]
              - sources:
                  - model: a
                    layer_range: [1, 3]
        """)
        #expect(slices.models.isEmpty && slices.slices.map { $0.sources[0].layers } == [0..<2, 1..<3])
    }

    /// Modules Tessera's architectures do not have (a vision-language model's vision tower) are refused in one line
    /// naming the module; malformed modules: configs are errors, as in mergekit.
    @Test func otherModulesAndMalformedModulesAreRefused() throws {
        for yaml in ["""
            merge_method: linear
            modules:
              vision_tower:
                models:
                  - model: a
            """, """
            merge_method: linear
            modules:
              default:
                models:
                  - model: a
              vision_tower:
                models:
                  - model: a
            """] {
            let e = #expect(throws: TesseraError.self) { try MergeConfig.parse(yaml: yaml) }
            #expect(e?.code == .unsupported && e?.message.contains("'vision_tower'") == true && e?.message.contains("\n") == false, "\(e?.message ?? "")")
        }
        let malformed = [
            "merge_method: linear\nmodules: base\n",
            "merge_method: linear\nmodules: {}\n",
            "merge_method: linear\nmodels:\n  - model: a\nmodules:\n  default:\n    models:\n      - model: a\n",
            "merge_method: linear\nmodules:\n  default:\n    models:\n      - model: a\n    slices:\n      - sources: [{model: a, layer_range: [0, 1]}]\n",
            "merge_method: linear\nmodules:\n  default:\n    parameters: {weight: 1}\n",
            "merge_method: linear\nmodules:\n  default:\n    models:\n      - model: a\n    base_model: a\n",
        ]
        for yaml in malformed {
            let e = #expect(throws: TesseraError.self, "\(yaml)") { try MergeConfig.parse(yaml: yaml) }
            #expect(e?.code == .invalidParameter && e?.message.contains("\n") == false, "\(yaml): \(e?.message ?? "")")
        }
    }

    /// mergekit appends a base_model that `models` does not list to the inputs with the top-level parameters: linear
    /// averages it in (checked against mergekit by the `linear-base` config fixture); without a weight it is an error,
    /// as in mergekit.
    @Test func anUnlistedBaseIsAveragedByLinear() throws {
        let sources = try ["a": MemorySource("a", floats: [("x", [2], [1, 2])]), "b": MemorySource("b", floats: [("x", [2], [3, 4])]),
                           "base": MemorySource("base", floats: [("x", [2], [10, 20])])]
        let resolve = { (ref: String) throws -> TensorSource in try #require(sources[ref]) }
        let withWeight = try MergeConfig.parse(yaml: "merge_method: linear\nbase_model: base\nparameters: {weight: 1}\nmodels:\n  - model: a\n  - model: b\n")
        let plan = try withWeight.plan(resolver: resolve).distributingModelDefaults()
        #expect(plan.models.map(\.name) == ["a", "b", "base"])
        #expect(try runMerge(plan)["x"]?.floats() == [14.0 / 3, 26.0 / 3])
        let noWeight = try MergeConfig.parse(yaml: "merge_method: linear\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1}\n")
        #expect(throws: TesseraError.self) { try noWeight.plan(resolver: resolve) }
        let listed = try MergeConfig.parse(yaml: "merge_method: linear\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: base\n    parameters: {weight: 1}\n")
        #expect(try listed.plan(resolver: resolve).models.map(\.name) == ["a", "base"])
    }

    @Test func unknownKeysAndMethodsAreErrors() throws {
        #expect(throws: TesseraError.self) { try MergeConfig.parse(yaml: "merge_method: linear\nmodels:\n  - model: a\nnormalise: true\n") }
        let e = #expect(throws: TesseraError.self) { try MergeConfig.parse(yaml: "merge_method: linaer\nmodels:\n  - model: a\n") }
        #expect(e?.message.contains("linaer") == true)
    }

    @Test func gradientsAndFiltersEvaluatePerTensor() throws {
        let yaml = """
        merge_method: slerp
        base_model: a
        models:
          - model: a
          - model: b
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5
        """
        let c = try MergeConfig.parse(yaml: yaml)
        let t = try #require(c.parameters["t"])
        #expect(t.evaluate(tensor: "model.layers.0.self_attn.q_proj.weight", layerPosition: 0) == .number(0))
        #expect(t.evaluate(tensor: "model.layers.9.self_attn.q_proj.weight", layerPosition: 0.5) == .number(0.3))
        #expect(t.evaluate(tensor: "model.layers.9.self_attn.q_proj.weight", layerPosition: 0.625) == .number(0.5))
        #expect(t.evaluate(tensor: "model.layers.3.mlp.up_proj.weight", layerPosition: 1) == .number(0))
        #expect(t.evaluate(tensor: "model.norm.weight", layerPosition: 1) == .number(0.5))
        let positions = LayerPositions(tensorNames: (0..<5).map { "model.layers.\($0).mlp.weight" } + ["model.embed_tokens.weight", "lm_head.weight"])
        #expect(positions.position("model.layers.2.mlp.weight") == 0.5)
        #expect(positions.position("model.embed_tokens.weight") == 0)
        #expect(positions.position("lm_head.weight") == 0)  // mergekit 0.1.5: after the layers, t = 0
    }

    @Test func resolverSeesEachReferenceOnce() throws {
        let text = try String(contentsOfFile: ReferenceData.path("mergekit/configs/slerp_base_ft1_t0.3.yaml"), encoding: .utf8)
        var calls: [String] = []
        let plan = try MergeConfig.parse(yaml: text).plan { ref in
            calls.append(ref)
            return try SafetensorsFile(path: ReferenceData.path(ref))
        }
        #expect(calls == ["inputs/base.safetensors", "inputs/ft1.safetensors"])
        #expect(plan.isBase(0) && !plan.isBase(1))
    }
}

@Suite struct ProvenanceTests {
    @Test func metadataRecordsMethodParametersInputsAndHashes() throws {
        let text = try String(contentsOfFile: ReferenceData.path("mergekit/configs/ties_density0.5.yaml"), encoding: .utf8)
        let plan = try MergeConfig.parse(yaml: text).plan { try SafetensorsFile(path: ReferenceData.path($0)) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-merge-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("merged.safetensors").path
        _ = try MergeDriver.mergeToFile(plan, path: path, tensorHash: { source, tensor in
            source.sourceName.hasSuffix("ft1.safetensors") ? "hash-of-\(tensor)" : nil
        })
        let written = try SafetensorsFile(path: path)
        let meta = Dictionary(written.metadata, uniquingKeysWith: { a, _ in a })
        #expect(meta["tessera.merge.method"] == "ties")
        let params = try JSONParser.parse(try #require(meta["tessera.merge.parameters"]))
        #expect(params["global"]?["normalize"] == .bool(true))
        #expect(params["global"]?["ties_variant"]?.stringValue == "mergekit")
        #expect(params["models"]?.arrayValue?.count == 3)
        #expect(params["models"]?.arrayValue?[0]["density"]?.doubleValue == 0.5)
        let inputs = try JSONParser.parse(try #require(meta["tessera.merge.inputs"]))
        #expect(inputs.arrayValue?.map { $0["name"]?.stringValue ?? "" } == [
            "inputs/base.safetensors", "inputs/ft1.safetensors", "inputs/ft2.safetensors", "inputs/ft3.safetensors",
        ])
        let hashes = try JSONParser.parse(try #require(meta["tessera.merge.input_hashes"]))
        #expect(hashes["inputs/ft1.safetensors"]?["hashes"]?["layer.bias"]?.stringValue == "hash-of-layer.bias")
        #expect(hashes["inputs/ft2.safetensors"]?["tensors"]?.intValue == 3)
        #expect(hashes["inputs/ft2.safetensors"]?["hashes"] == nil)
        // The written tensors are the merge.
        let ref = try ReferenceData.file("mergekit/ties_density0.5.safetensors")
        for name in ref.tensorNames { #expect(relativeError(try written.floats(name), try ref.floats(name)) <= 1e-6) }
    }

    @Test func registryHasEveryMethod() throws {
        for name in ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "slerp",
                     "fisher", "ours", "theirs", "base"] {
            #expect(try MergeRegistry.method(named: name).name == name)
        }
    }

    @Test func takeMethodsReturnTheirSide() throws {
        let base = try MemorySource("base", floats: [("x", [2], [0, 0])])
        let ours = try MemorySource("ours", floats: [("x", [2], [1, 1])])
        let theirs = try MemorySource("theirs", floats: [("x", [2], [2, 2])])
        for (method, expected) in [("ours", [Float(1), 1]), ("theirs", [2, 2]), ("base", [0, 0])] {
            let plan = MergePlan(method: method, base: MergeInputModel(name: "base", source: base),
                                 models: [MergeInputModel(name: "ours", source: ours), MergeInputModel(name: "theirs", source: theirs)])
            #expect(try runMerge(plan)["x"]!.floats() == expected)
        }
    }
}

@Suite struct SlerpTests {
    /// Nearly colinear tensors fall back to the plain lerp, as mergekit does; otherwise the spherical formula holds.
    @Test func colinearFallsBackToLerp() throws {
        let v0: [Float] = [1, 2, 3, 4]
        let v1 = v0.map { $0 * 2 }
        let base = try MemorySource("base", floats: [("x", [4], v0)])
        let other = try MemorySource("other", floats: [("x", [4], v1)])
        let plan = MergePlan(method: "slerp", base: MergeInputModel(name: "base", source: base),
                             models: [MergeInputModel(name: "base", source: base), MergeInputModel(name: "other", source: other)],
                             parameters: ["t": .number(0.25)])
        let out = try runMerge(plan)["x"]!.floats()
        #expect(out == zip(v0, v1).map { 0.75 * $0 + 0.25 * $1 })
        // Orthogonal unit vectors: slerp at t stays on the unit circle at angle t·90°.
        let a = try MemorySource("a", floats: [("x", [2], [1, 0])])
        let b = try MemorySource("b", floats: [("x", [2], [0, 1])])
        let p2 = MergePlan(method: "slerp", base: MergeInputModel(name: "a", source: a), models: [MergeInputModel(name: "b", source: b)],
                           parameters: ["t": .number(1.0 / 3)])
        let o2 = try runMerge(p2)["x"]!.floats()
        #expect(abs(o2[0] - Float(cos(Double.pi / 6))) < 1e-6 && abs(o2[1] - Float(sin(Double.pi / 6))) < 1e-6)
    }
}
