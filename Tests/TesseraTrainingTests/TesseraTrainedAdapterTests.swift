import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraTraining

/// An adapter trained by `tessera train lora` (Tests/Fixtures/training/tessera-trained/adapter, made by
/// scripts/make_trained_adapter_fixture.py) loads in PEFT, and PEFT's logits with it equal the engine's with the
/// adapter attached unmerged (`eval --adapter`'s path) within 1e-4.
@Suite struct TesseraTrainedAdapterTests {
    static let folder = TrainingFixtures.trainingFixtures + "/tessera-trained"

    @Test func peftsLogitsWithTheTrainedAdapterEqualTheEngines() throws {
        let expected = try SafetensorsFile(path: Self.folder + "/peft_logits.safetensors")
        let tokens = try expected.tensor("tokens")
        let ids: [Int] = tokens.bytes.withUnsafeBytes { raw in (0..<(raw.count / 8)).map { Int(raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) } }
        let want = try expected.floats("logits")
        let (batch, length) = (tokens.shape[0], tokens.shape[1])
        let vocabulary = want.count / (batch * length)

        let base = try ModelLoader.load(path: TrainingFixtures.engineFixtures + "/tiny_llama")
        let baseLogits = try (0..<batch).flatMap { try base.logits(Array(ids[($0 * length)..<($0 * length + length)])) }
        let adapterFolder = Self.folder + "/adapter"
        let weights = try SafetensorsFile(path: adapterFolder + "/" + LoRAAdapter.weightsName)
        let config = Array(try Data(contentsOf: URL(fileURLWithPath: adapterFolder + "/" + LoRAAdapter.configName)))
        let adapter = try LoRAAdapter(configBytes: config, tensors: weights, name: adapterFolder)
        #expect(adapter.modules.count == 2 * 7, "q, k, v, o, gate, up and down in both layers")
        let summary = try LoRAAdapterAttachment.attach([LoRAAdapterInput(adapter: adapter, tensors: weights, name: "tessera-trained")], to: base)
        #expect(summary.modules == 14)
        let got = try (0..<batch).flatMap { try base.logits(Array(ids[($0 * length)..<($0 * length + length)])) }
        #expect(got.count == batch * length * vocabulary)
        var worst: Float = 0, moved: Float = 0
        for i in got.indices {
            worst = max(worst, abs(got[i] - want[i]))
            moved = max(moved, abs(baseLogits[i] - want[i]))
        }
        #expect(worst < 1e-4, "max |Δlogit| against PEFT = \(worst)")
        // The trained adapter changes the logits well beyond the tolerance: the comparison is not the base's.
        #expect(moved > 0.05, "the adapter moved the logits by at most \(moved)")
    }
}
