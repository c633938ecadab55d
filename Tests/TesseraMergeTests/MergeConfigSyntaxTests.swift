import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraTestSupport

/// mergekit config syntax: slices, gradient placement, filters, multi-document configs, MODEL+LORA, the tokenizer
/// keys, and layer naming by architecture. Parsing is strict: an unknown key or a wrong type names its line.
@Suite struct MergeConfigSyntaxTests {
    /// A model of `layers` Llama-style layers (two tensors each) plus embeddings, final norm and head; each value
    /// encodes (model seed, layer) so that tests can see where an output tensor came from.
    static func llama(_ seed: Float, layers: Int) throws -> MemorySource {
        var t: [(String, [Int], [Float])] = [("model.embed_tokens.weight", [2], [seed, seed])]
        for l in 0..<layers {
            t.append(("model.layers.\(l).self_attn.q_proj.weight", [2], [seed, Float(l)]))
            t.append(("model.layers.\(l).mlp.up_proj.weight", [2], [seed, Float(l)]))
        }
        t.append(("model.norm.weight", [2], [seed, -1]))
        t.append(("lm_head.weight", [2], [seed, -2]))
        return try MemorySource("m\(Int(seed))", floats: t)
    }

    static func values(_ t: RawTensor) throws -> [Float] { try t.floats(name: "t") }

    @Test func slicesParseWithPerSourceAndPerSliceSettings() throws {
        let c = try MergeConfig.parse(yaml: """
        slices:
          - sources:
              - model: a
                layer_range: [0, 2]
                parameters: {weight: 0.7}
              - model: b
                layer_range: [2, 4]
          - sources:
              - model: b
                layer_range: [3, 4]
            base_model: b
            parameters:
              weight: [0.2, 0.9]
        merge_method: linear
        parameters: {weight: 1.0}
        """)
        #expect(c.models.isEmpty && c.slices.count == 2)
        #expect(c.slices[0].sources[0] == .init(model: "a", layers: 0..<2, parameters: ["weight": .number(0.7)]))
        #expect(c.slices[1].baseModel == "b" && c.slices[1].parameters["weight"] == .gradient([0.2, 0.9]))
        #expect(c.referencedModels == ["a", "b"])
    }

    @Test func aSlicesProgramRenumbersLayersAndPlacesGradients() throws {
        let a = try Self.llama(1, layers: 4), b = try Self.llama(2, layers: 4)
        let c = try MergeConfig.parse(yaml: """
        slices:
          - sources:
              - {model: a, layer_range: [0, 3]}
          - sources:
              - {model: b, layer_range: [1, 2]}
          - sources:
              - {model: a, layer_range: [2, 4]}
        merge_method: passthrough
        """)
        let program = try c.program { $0 == "a" ? a : b }
        #expect(program.segments.count == 3 && program.outputLayers == 6 && program.outputLayerOrigins == [0, 1, 2, 1, 2, 3])
        // The weights before the layers come with the first slice, those after with the last.
        #expect(program.segments[0].models[0].source.tensorNames.first == "model.embed_tokens.weight")
        #expect(program.segments[2].models[0].source.tensorNames.suffix(2) == ["model.norm.weight", "lm_head.weight"])
        #expect(!program.segments[1].models[0].source.tensorNames.contains("lm_head.weight"))
        // t runs over each slice: k/(n−1), 1 for a slice of one layer, 0 outside the layers.
        #expect(program.segments[0].layerPositions?["model.layers.1.mlp.up_proj.weight"] == 0.5)
        #expect(program.segments[1].layerPositions?["model.layers.3.mlp.up_proj.weight"] == 1)
        #expect(program.segments[2].layerPositions?["model.layers.5.mlp.up_proj.weight"] == 1)
        #expect(program.segments[2].layerPositions?["lm_head.weight"] == 0)
        var out: [String: RawTensor] = [:]
        for p in program.segments { try MergeDriver.run(p) { out[$0] = $1 } }
        #expect(out.count == 3 + 6 * 2)
        for (layer, from) in [(0, (1, 0)), (2, (1, 2)), (3, (2, 1)), (4, (1, 2)), (5, (1, 3))] {
            #expect(try Self.values(out["model.layers.\(layer).self_attn.q_proj.weight"]!) == [Float(from.0), Float(from.1)], "layer \(layer)")
        }
        #expect(try Self.values(out["lm_head.weight"]!) == [1, -2])
    }

    @Test func aSliceBaseMustBeAmongItsSources() throws {
        let a = try Self.llama(1, layers: 2), b = try Self.llama(2, layers: 2)
        let c = try MergeConfig.parse(yaml: "slices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n      - {model: b, layer_range: [0, 2]}\nmerge_method: ties\nbase_model: z\n")
        let e = #expect(throws: TesseraError.self) { _ = try c.program { $0 == "a" ? a : b } }
        #expect(e?.message.contains("'z' is not among") == true)
        let past = try MergeConfig.parse(yaml: "slices:\n  - sources:\n      - {model: a, layer_range: [0, 3]}\nmerge_method: passthrough\n")
        let e2 = #expect(throws: TesseraError.self) { _ = try past.program { _ in a } }
        #expect(e2?.message.contains("goes past the 2 layers") == true)
    }

    /// Each refusal is one line that names the line of the config.
    @Test(arguments: [
        ("slices:\n  - sources:\n      - {model: a, layer_range: [0, 2], weight: 1}\nmerge_method: linear\n", "unknown key 'weight'", 3),
        ("slices:\n  - sources:\n      - {model: a, layer_range: [0, x]}\nmerge_method: linear\n", "layer_range[1]", 3),
        ("slices:\n  - sources:\n      - {model: a, layer_range: [2, 2]}\nmerge_method: linear\n", "FROM < TO", 3),
        ("slices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n      - {model: b, layer_range: [0, 3]}\nmerge_method: linear\n", "different numbers of layers", 2),
        ("slices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n    merge_method: slerp\nmerge_method: linear\n", "merge_method is not supported", 4),
        ("slices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n    residual_weight: 0.5\nmerge_method: linear\n", "residual_weight", 4),
        ("models:\n  - model: a\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\nmerge_method: linear\n", "both given", 1),
        ("models:\n  - model: a\nmerge_method: linear\ntokenizer:\n  source: base\n  tokens: {x: {source: {kind: one}}}\n", "tokenizer.tokens.x.source.kind", 6),
        ("models:\n  - model: a\nmerge_method: linear\ntokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: a}\n", "exactly one of token: and token_id:", 7),
        ("models:\n  - model: a\nmerge_method: linear\ntokenizer:\n  pad_to_multiple_of: -8\n", "pad_to_multiple_of", 5),
        ("models:\n  - model: a\nmerge_method: linear\ntokenizer:\n  tokens:\n    x: {force: maybe}\n", "tokenizer.tokens.x.force", 6),
        ("models:\n  - model: a\nmerge_method: linear\ntokenizer: {source: base}\ntokenizer_source: base\n", "both set", 4),
        ("models:\n  - model: a\nmerge_method: linear\nmodules: {}\n", "modules must be a non-empty mapping", 4),
        ("merge_method: linear\nmodules:\n  default:\n    models:\n      - model: a\n  vision_tower:\n    models:\n      - model: b\n",
         "module 'vision_tower' is not supported", 6),
        ("models:\n  - model: a\nmerge_method: linear\nchat_template: [1]\n", "chat_template must be a string", 4),
    ])
    func badConfigsNameTheirLine(yaml: String, says: String, line: Int) throws {
        let e = #expect(throws: TesseraError.self) { try MergeConfig.parse(yaml: yaml, file: "c.yml") }
        #expect(e?.message.contains(says) == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("(line \(line))") == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("\n") == false)
    }

    @Test func tokenizerKeysParse() throws {
        let c = try MergeConfig.parse(yaml: "models:\n  - model: a\nmerge_method: linear\ntokenizer_source: union\nchat_template: auto\nname: x\n")
        #expect(c.tokenizerSource == "union" && c.chatTemplate == "auto" && c.name == "x")
        let d = try MergeConfig.parse(yaml: "models:\n  - model: a\nmerge_method: linear\ntokenizer: {source: a, pad_to_multiple_of: null}\n")
        #expect(d.tokenizerSource == "a" && d.referencedModels == ["a"])
    }

    /// mergekit tests a filter as a substring of the tensor's name (`filter in name`), not as a glob.
    @Test func filtersAreSubstrings() {
        let s = ParameterSetting.filtered([FilteredSetting(filter: "*proj", value: .number(1)), FilteredSetting(filter: "layers.2.", value: .number(2)),
                                           FilteredSetting(filter: nil, value: .number(3))])
        #expect(s.evaluate(tensor: "model.layers.2.self_attn.q_proj.weight", layerPosition: 0) == .number(2))
        #expect(s.evaluate(tensor: "model.layers.12.self_attn.q_proj.weight", layerPosition: 0) == .number(3))
        #expect(ParameterSetting.filtered([FilteredSetting(filter: "[mlp]", value: .number(1))]).evaluate(tensor: "model.layers.0.mlp.x", layerPosition: 0) == nil)
    }

    /// A filter list that matches nothing for a tensor falls through to the next scope (slice, then config).
    @Test func filterListsFallThroughToTheNextScope() throws {
        let own = ParameterSetting.filtered([FilteredSetting(filter: "self_attn", value: .number(0.9))])
        let combined = own.fallingBack(to: .number(0.3))
        #expect(combined.evaluate(tensor: "model.layers.0.self_attn.q_proj.weight", layerPosition: 0) == .number(0.9))
        #expect(combined.evaluate(tensor: "model.layers.0.mlp.up_proj.weight", layerPosition: 0) == .number(0.3))
        #expect(ParameterSetting.number(1).fallingBack(to: .number(2)) == .number(1))
        let a = try MemorySource("a", floats: [("model.layers.0.self_attn.q_proj.weight", [1], [1]), ("model.layers.0.mlp.up_proj.weight", [1], [1])])
        let plan = try MergePlan(method: "linear", models: [MergeInputModel(name: "a", source: a, parameters: ["weight": own])],
                                 parameters: ["weight": .number(0.3), "normalize": .bool(false)]).distributingModelDefaults()
        let out = try runMerge(plan)
        #expect(try Self.values(out["model.layers.0.self_attn.q_proj.weight"]!) == [0.9])
        #expect(try Self.values(out["model.layers.0.mlp.up_proj.weight"]!) == [0.3])
    }

    /// A list with non-numbers steps through its entries: entry ⌊t·(n−1)⌋, as mergekit picks it.
    @Test func nonNumericListsStep() throws {
        let c = try MergeConfig.parse(yaml: "models:\n  - model: a\nmerge_method: linear\nparameters:\n  normalize: [true, false, false]\n")
        let s = try #require(c.parameters["normalize"])
        #expect(s == .steps([.bool(true), .bool(false), .bool(false)]))
        #expect(s.evaluate(tensor: "x", layerPosition: 0.49) == .bool(true) && s.evaluate(tensor: "x", layerPosition: 0.5) == .bool(false))
        #expect(s.evaluate(tensor: "x", layerPosition: 1) == .bool(false))
    }

    /// Whole-model gradients: layer i of n at i/(n−1) (1 for a one-layer model), everything outside the layers at 0.
    @Test func wholeModelGradientPlacement() {
        let p = LayerPositions(tensorNames: ["model.embed_tokens.weight", "model.layers.0.a", "model.layers.4.a", "lm_head.weight", "model.norm.weight"])
        #expect(p.position("model.layers.1.a") == 0.25 && p.position("model.layers.4.a") == 1)
        #expect(p.position("lm_head.weight") == 0 && p.position("model.norm.weight") == 0 && p.position("model.embed_tokens.weight") == 0)
        #expect(LayerPositions(tensorNames: ["model.layers.0.a"]).position("model.layers.0.a") == 1)
    }

    /// Layers, and the weights before and after them, for the architectures tessera's engine runs.
    @Test(arguments: [
        (["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"],
         "model.layers.", ["model.embed_tokens.weight"], ["model.norm.weight", "lm_head.weight"]),
        (["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.1.ln_1.bias", "transformer.ln_f.weight", "transformer.ln_f.bias"],
         "transformer.h.", ["transformer.wte.weight", "transformer.wpe.weight"], ["transformer.ln_f.weight", "transformer.ln_f.bias"]),
        (["transformer.wte.weight", "transformer.h.0.attn.attention.q_proj.weight", "transformer.h.1.mlp.c_fc.bias", "transformer.ln_f.weight", "lm_head.weight"],
         "transformer.h.", ["transformer.wte.weight"], ["transformer.ln_f.weight", "lm_head.weight"]),
        (["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight", "bert.encoder.layer.0.attention.self.query.weight",
          "bert.encoder.layer.1.output.dense.bias", "bert.pooler.dense.weight", "cls.predictions.bias"],
         "bert.encoder.layer.", ["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight"], ["bert.pooler.dense.weight", "cls.predictions.bias"]),
    ])
    func layerLayoutByArchitecture(names: [String], prefix: String, pre: [String], post: [String]) {
        let layout = LayerLayout(tensorNames: names)
        #expect(layout.prefix == prefix && layout.layerCount == 2)
        #expect(layout.pre == pre && layout.post == post)
        let first = layout.layers[1][0]
        #expect(layout.renumbered(first, to: 7) == first.replacingOccurrences(of: prefix + "1.", with: prefix + "7."))
    }

    @Test func multiDocumentConfigsRunInDependencyOrder() throws {
        let docs = try MergeConfig.parseDocuments(yaml: """
        merge_method: slerp
        base_model: base
        models: [{model: base}, {model: second}]
        parameters: {t: 0.5}
        ---
        name: second
        merge_method: linear
        models: [{model: first}, {model: b}]
        ---
        name: first
        merge_method: linear
        models: [{model: a+lora}, {model: b}]
        """)
        #expect(docs.map(\.name) == [nil, "second", "first"])
        let (order, final) = try MergeConfig.runOrder(docs, file: "c.yml")
        #expect(order == [2, 1, 0] && final == 0)
        let cycle = try MergeConfig.parseDocuments(yaml: "name: x\nmerge_method: linear\nmodels: [{model: y}]\n---\nname: y\nmerge_method: linear\nmodels: [{model: x}]\n")
        let e = #expect(throws: TesseraError.self) { _ = try MergeConfig.runOrder(cycle, file: "c.yml") }
        #expect(e?.message.contains("cycle") == true)
        let twice = #expect(throws: TesseraError.self) {
            _ = try MergeConfig.parseDocuments(yaml: "name: x\nmerge_method: linear\nmodels: [{model: a}]\n---\nname: x\nmerge_method: linear\nmodels: [{model: b}]\n")
        }
        #expect(twice?.message.contains("two documents are named 'x'") == true)
    }

    static func adapterConfig(_ extra: String = "") -> [UInt8] {
        Array("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8\(extra)}".utf8)
    }

    /// W + (alpha/r)·B·A with the rank from the factors (or alpha/√r with rsLoRA); transposed for fan_in_fan_out.
    @Test func loraIsAppliedAsPEFTMergesIt() throws {
        let w: [Float] = [1, 2, 3, 4, 5, 6] // [2, 3]
        let base = try MemorySource("base", floats: [("model.q.weight", [2, 3], w), ("model.k.weight", [2, 3], w)])
        let a: [Float] = [1, 0, 2, 0, 1, 0, 1, 1, 0, 0, 0, 1] // [4, 3]
        let b: [Float] = [1, 0, 0, 1, 0, 1, 1, 0] // [2, 4]
        let adapter = try MemorySource("adapter", floats: [("base_model.model.model.q.lora_A.weight", [4, 3], a),
                                                            ("base_model.model.model.q.lora_B.weight", [2, 4], b)])
        var ba = [Float](repeating: 0, count: 6)
        for i in 0..<2 { for j in 0..<3 { for r in 0..<4 { ba[i * 3 + j] += b[i * 4 + r] * a[r * 3 + j] } } }
        let plain = try LoRAAppliedSource(base: base, adapter: adapter, adapterConfig: Self.adapterConfig(), name: "base+adapter")
        #expect(try Self.values(plain.rawTensor("model.q.weight")) == zip(w, ba).map { $0 + 2 * $1 })
        #expect(try Self.values(plain.rawTensor("model.k.weight")) == w)
        let rs = try LoRAAppliedSource(base: base, adapter: adapter, adapterConfig: Self.adapterConfig(", \"use_rslora\": true"), name: "rs")
        #expect(try Self.values(rs.rawTensor("model.q.weight")) == zip(w, ba).map { $0 + 4 * $1 })
        let patterned = try LoRAAppliedSource(base: base, adapter: adapter, adapterConfig: Self.adapterConfig(", \"alpha_pattern\": {\"q\": 2}"), name: "p")
        #expect(try Self.values(patterned.rawTensor("model.q.weight")) == zip(w, ba).map { $0 + 0.5 * $1 })
        let dora = #expect(throws: TesseraError.self) {
            _ = try LoRAAppliedSource(base: base, adapter: adapter, adapterConfig: Self.adapterConfig(", \"use_dora\": true"), name: "d")
        }
        #expect(dora?.message.contains("DoRA") == true)
        let stray = try MemorySource("adapter", floats: [("base_model.model.model.zz.lora_A.weight", [4, 3], a), ("base_model.model.model.zz.lora_B.weight", [2, 4], b)])
        #expect(throws: TesseraError.self) { _ = try LoRAAppliedSource(base: base, adapter: stray, adapterConfig: Self.adapterConfig(), name: "s") }
    }

    @Test func passthroughTakesOneModelAndScales() throws {
        let a = try MemorySource("a", floats: [("x", [2], [1, -2])])
        let scaled = MergePlan(method: "passthrough", models: [MergeInputModel(name: "a", source: a, parameters: ["scale": .number(0.5)])])
        #expect(try Self.values(runMerge(scaled)["x"]!) == [0.5, -1])
        let two = MergePlan(method: "passthrough", models: [MergeInputModel(name: "a", source: a), MergeInputModel(name: "b", source: a)])
        #expect(throws: TesseraError.self) { _ = try runMerge(two) }
    }
}
