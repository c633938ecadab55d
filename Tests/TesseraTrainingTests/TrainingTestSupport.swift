import Foundation
import TesseraCore
import TesseraEngine
import TesseraTestSupport
import TesseraTraining

/// Paths and helpers the training tests share.
enum TrainingFixtures {
    static let engineFixtures = packageRoot + "/Tests/TesseraEngineTests/Fixtures"
    static let trainingFixtures = PackagePaths.fixtures + "/training"

    /// LoRA parameters read from a PEFT adapter folder (A and B as PEFT stores them, its scalings).
    static func parameters(adapterFolder folder: String, dropout: Float = 0) throws -> LoRAParameters {
        try parametersAndKeys(adapterFolder: folder, dropout: dropout).parameters
    }

    /// The same, with each module's A and B tensor names in the adapter file.
    static func parametersAndKeys(adapterFolder folder: String, dropout: Float = 0) throws -> (parameters: LoRAParameters, keys: [(a: String, b: String)]) {
        let tensors = try SafetensorsFile(path: folder + "/adapter_model.safetensors")
        let config = Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/adapter_config.json")))
        let adapter = try LoRAAdapter(configBytes: config, tensors: tensors, name: folder)
        let modules = try adapter.modules.map { m in
            LoRAModuleParameters(module: AdaptableModule(name: m.name, outputs: m.outFeatures, inputs: m.inFeatures), rank: m.rank,
                                 scaling: Float(m.scaling), a: try tensors.floats(m.aName), b: try tensors.floats(m.bName))
        }
        return (LoRAParameters(modules: modules, dropout: dropout), adapter.modules.map { ($0.aName, $0.bName) })
    }

    /// Seeded LoRA parameters on every adaptable module (`only`: those whose short name is listed), B non-zero so
    /// that A gets gradients too.
    static func randomParameters(for model: any TrainableLanguageModel, rank: Int = 4, scaling: Float = 2, seed: UInt64 = 7,
                                 only: Set<String>? = nil, dropout: Float = 0) -> LoRAParameters {
        var state = seed
        func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state >> 11) % 2_000_001 - 1_000_000) / 1_000_000
        }
        let modules = model.adaptableModules.filter { only?.contains($0.shortName) ?? true }.map { m in
            LoRAModuleParameters(module: m, rank: rank, scaling: scaling,
                                 a: (0..<(rank * m.inputs)).map { _ in 0.2 * next() }, b: (0..<(m.outputs * rank)).map { _ in 0.2 * next() })
        }
        return LoRAParameters(modules: modules, dropout: dropout)
    }

    /// A few sequences of seeded tokens, some targets ignored.
    static func batch(vocabulary: Int, lengths: [Int], seed: UInt64 = 3) -> [TrainingSequence] {
        var state = seed
        return lengths.map { n in
            let tokens: [Int32] = (0..<n).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return Int32((state >> 33) % UInt64(vocabulary))
            }
            var s = TrainingSequence(text: tokens)
            if n > 2 { s.targets[0] = TrainingSequence.ignored }
            return s
        }
    }
}
