import TesseraCore

/// One training example for a causal language model: the tokens read, and for each position the token the model
/// should predict after reading `tokens[0...t]` (`TrainingSequence.ignored` where nothing is predicted: a prompt, a
/// question, padding). Hugging Face's `labels` are these targets shifted right by one.
public struct TrainingSequence: Sendable, Equatable {
    public static let ignored: Int32 = -1
    public var tokens: [Int32]
    /// `targets.count == tokens.count`.
    public var targets: [Int32]

    public init(tokens: [Int32], targets: [Int32]) {
        self.tokens = tokens
        self.targets = targets
    }

    /// Plain text: every next token counts.
    public init(text tokens: [Int32]) {
        self.tokens = tokens
        self.targets = Array(tokens.dropFirst()) + [Self.ignored]
    }

    /// Positions whose prediction counts in the loss.
    public var countedTargets: Int { targets.reduce(0) { $0 + ($1 == Self.ignored ? 0 : 1) } }
}

/// A sum of per-token cross-entropies (nats) and how many tokens it sums: losses of micro-batches add exactly, and
/// the mean is taken once over the whole batch (what PyTorch's mean over a batch's counted labels gives).
public struct LossSum: Sendable, Equatable {
    public var sum: Double
    public var count: Int

    public init(sum: Double = 0, count: Int = 0) {
        self.sum = sum
        self.count = count
    }

    public var mean: Double { count > 0 ? sum / Double(count) : .nan }

    public static func + (l: LossSum, r: LossSum) -> LossSum { LossSum(sum: l.sum + r.sum, count: l.count + r.count) }
}

/// A linear layer a LoRA module may target: its Hugging Face module name (the one PEFT writes, without
/// `base_model.model.`, e.g. `model.layers.0.self_attn.q_proj`) and the shape of its weight.
public struct AdaptableModule: Sendable, Equatable {
    public var name: String
    public var outputs: Int
    public var inputs: Int

    public init(name: String, outputs: Int, inputs: Int) {
        self.name = name
        self.outputs = outputs
        self.inputs = inputs
    }

    /// The last component of the name (`q_proj`), what `target_modules` lists.
    public var shortName: String { String(name.split(separator: ".").last ?? Substring(name)) }
}

/// The trainable factors of one LoRA module, as PEFT stores them: A [rank, inputs], B [outputs, rank], both
/// row-major float32, the delta being `scaling · B · A`; and their gradients, the same shapes.
public final class LoRAModuleParameters {
    public let module: AdaptableModule
    public let rank: Int
    public var scaling: Float
    public var a: [Float]
    public var b: [Float]
    public var gradientA: [Float]
    public var gradientB: [Float]
    /// A PhatGOOSE gate [inputs] scaling each token's delta by σ(g · x_t) (nil: no gate); see `GateParameters`.
    public var gate: GateParameters?
    /// A and B get no gradient (a frozen expert whose gate trains).
    public var frozen = false

    public init(module: AdaptableModule, rank: Int, scaling: Float, a: [Float], b: [Float]) {
        precondition(a.count == rank * module.inputs && b.count == module.outputs * rank, "LoRA factor sizes")
        self.module = module
        self.rank = rank
        self.scaling = scaling
        self.a = a
        self.b = b
        gradientA = [Float](repeating: 0, count: a.count)
        gradientB = [Float](repeating: 0, count: b.count)
    }

    public func zeroGradients() {
        for i in gradientA.indices { gradientA[i] = 0 }
        for i in gradientB.indices { gradientB[i] = 0 }
        gate?.zeroGradient()
    }
}

/// Every LoRA module being trained, and the dropout PEFT applies to a module's input before A (`lora_dropout`).
public final class LoRAParameters {
    public var modules: [LoRAModuleParameters]
    public var dropout: Float

    public init(modules: [LoRAModuleParameters], dropout: Float = 0) {
        self.modules = modules
        self.dropout = dropout
    }

    public func module(named name: String) -> LoRAModuleParameters? { modules.first { $0.module.name == name } }

    public func zeroGradients() { modules.forEach { $0.zeroGradients() } }
}

/// A causal language model (Llama, GPT-2, GPT-Neo) that can be trained through LoRA modules while its own weights
/// stay frozen: the seam between the architectures' backward passes and the trainer.
public protocol TrainableLanguageModel: AnyObject {
    var vocabularySize: Int { get }
    var maxSequenceLength: Int { get }
    /// Every linear layer a LoRA module may target.
    var adaptableModules: [AdaptableModule] { get }
    /// Uses `parameters` in every following pass (nil: the base alone). Throws, changing nothing, if a module is not
    /// one of `adaptableModules` or its factors do not fit it.
    func attach(_ parameters: LoRAParameters?) throws
    /// Forward and backward over `batch`: returns the sum of the counted targets' cross-entropy and their count, and
    /// adds `lossScale · ∂(that sum)/∂θ` to the gradient of every attached LoRA factor. With `dropout > 0`, the masks
    /// are drawn from `dropoutSeed` (the same seed gives the same masks).
    func accumulateGradients(_ batch: [TrainingSequence], lossScale: Float, dropoutSeed: UInt64) throws -> LossSum
    /// Forward only (no dropout): the sum of the counted targets' cross-entropy and their count.
    func loss(_ batch: [TrainingSequence]) throws -> LossSum
}
