import Foundation
import TesseraCore
import TesseraIO

/// How the gates of one expert are trained: mttl's `PhatgooseTransformConfig` defaults (100 steps, lr 1e-3,
/// warm-up 10 % of the steps, batch 4, seed 42), AdamW with weight decay 0 (mttl forces it for gate training), β and
/// ε torch's defaults (mttl passes `adam_epsilon` 1e-8), transformers' linear schedule with warm-up.
public struct PhatGOOSESettings: Sendable, Equatable {
    public var steps: Int
    public var learningRate: Double
    /// The warm-up as a fraction of the steps; mttl takes int(ratio × steps) steps (rounded down).
    public var warmupRatio: Double
    public var batchSize: Int
    public var microBatchSize: Int
    public var seed: UInt64
    public var adamW: AdamWSettings

    public init(steps: Int = 100, learningRate: Double = 1e-3, warmupRatio: Double = 0.1, batchSize: Int = 4, microBatchSize: Int? = nil,
                seed: UInt64 = 42, adamW: AdamWSettings = AdamWSettings(weightDecay: 0)) {
        self.steps = steps
        self.learningRate = learningRate
        self.warmupRatio = warmupRatio
        self.batchSize = batchSize
        self.microBatchSize = microBatchSize ?? batchSize
        self.seed = seed
        self.adamW = adamW
    }

    public var warmupSteps: Int { Int((warmupRatio * Double(steps)).rounded(.down)) }
}

/// What a gate-training run gives: each module's gate (the expert's module order) and the loss of every step.
public struct PhatGOOSEOutcome {
    public var gates: [(module: String, values: [Float])]
    public var losses: [Double]
    public var tokens: Int
    public var wallSeconds: Double

    /// The gates as the file the routers read, with the run's settings in its metadata.
    public func file(settings: PhatGOOSESettings, metadata: [(String, String)] = []) -> PhatGOOSEGates {
        PhatGOOSEGates(gates: gates, steps: settings.steps, learningRate: settings.learningRate, metadata: [
            ("warmup_steps", String(settings.warmupSteps)), ("batch_size", String(settings.batchSize)), ("seed", String(settings.seed)),
            ("weight_decay", String(settings.adamW.weightDecay)), ("final_loss", String(losses.last ?? .nan)),
        ] + metadata)
    }
}

/// PhatGOOSE's gate training for one expert (mttl's `phatgoose` library transform): the base and the expert's LoRA
/// factors frozen, a gate g_m [d_in] per adapted module, initialised to 0, making the module's output
/// x·Wᵀ + σ(g_m · x_t) · s · B · A · x_t; only the gates learn, on the expert's own data, with the next-token
/// cross-entropy (mean over a batch's counted targets, as `LoRATrainer`). No LoRA dropout during gate training: the
/// expert is used as it is at inference. Deterministic for a seed (the data order is `BatchOrder`'s).
public final class PhatGOOSEGateTrainer {
    public let model: any TrainableLanguageModel
    public let expert: LoRAParameters
    public let data: TrainingDataSet
    public let settings: PhatGOOSESettings
    /// Called after each step with the step (1-based), its loss and its tokens (progress display).
    public var onStep: ((_ step: Int, _ loss: Double, _ tokens: Int) -> Void)?

    /// `expert` is used as given (its factors are not copied); the trainer sets its dropout to 0, freezes it and gives
    /// every module a zero gate.
    public init(model: any TrainableLanguageModel, expert: LoRAParameters, data: TrainingDataSet, settings: PhatGOOSESettings) throws {
        guard settings.steps > 0 else { throw TesseraError(.usage, "gate training needs at least one step", hint: "give --steps N") }
        guard settings.batchSize > 0, settings.microBatchSize > 0, settings.microBatchSize <= settings.batchSize else {
            throw TesseraError(.usage, "the batch size and micro-batch size must be positive, the micro-batch no larger than the batch",
                               hint: "e.g. --batch-size 4")
        }
        guard settings.learningRate.isFinite, settings.learningRate > 0 else {
            throw TesseraError(.usage, "the learning rate must be a positive number", hint: "e.g. --lr 1e-3")
        }
        guard settings.warmupRatio.isFinite, settings.warmupRatio >= 0, settings.warmupRatio < 1 else {
            throw TesseraError(.usage, "the warm-up ratio must be in [0, 1)", hint: "e.g. --warmup-ratio 0.1")
        }
        guard !expert.modules.isEmpty else { throw TesseraError(.invalidParameter, "the expert adapts no module", hint: "name a LoRA adapter") }
        guard !data.sequences.isEmpty else { throw TesseraError(.invalidParameter, "no training sequence", hint: "give a --task file with examples") }
        for s in data.sequences {
            guard s.tokens.count <= model.maxSequenceLength else {
                throw TesseraError(.invalidParameter, "a sequence of \(s.tokens.count) tokens is longer than the model's \(model.maxSequenceLength)",
                                   hint: "lower --max-length to at most \(model.maxSequenceLength)")
            }
        }
        self.model = model
        self.expert = expert
        self.data = data
        self.settings = settings
    }

    public func run() throws -> PhatGOOSEOutcome {
        let started = DispatchTime.now().uptimeNanoseconds
        expert.dropout = 0
        for m in expert.modules {
            m.frozen = true
            m.gate = GateParameters(inputs: m.module.inputs)
        }
        // attach checks every module and gate against the model before anything runs.
        try model.attach(expert)
        defer { try? model.attach(nil) }
        var moments = expert.modules.map { AdamWMoments(count: $0.module.inputs) }
        let order = BatchOrder(count: data.sequences.count, batchSize: settings.batchSize, seed: settings.seed)
        var losses: [Double] = [], tokens = 0
        for s in 0..<settings.steps {
            let batch = order.batch(step: s).map { data.sequences[$0] }
            let counted = batch.reduce(0) { $0 + $1.countedTargets }
            expert.zeroGradients()
            var loss = LossSum()
            if counted > 0 {
                let scale = 1 / Float(counted)
                var start = 0
                while start < batch.count {
                    let end = min(batch.count, start + settings.microBatchSize)
                    loss = loss + (try model.accumulateGradients(Array(batch[start..<end]), lossScale: scale, dropoutSeed: 0))
                    start = end
                }
            }
            guard loss.count == 0 || loss.sum.isFinite else {
                throw TesseraError(.invalidParameter, "the loss is not finite at step \(s + 1) (\(loss.sum))",
                                   hint: "lower the learning rate (--lr) or check the expert and the data")
            }
            let lr = LearningRateSchedule.linear.rate(base: settings.learningRate, step: s, warmup: settings.warmupSteps, total: settings.steps)
            for (k, m) in expert.modules.enumerated() {
                guard let gate = m.gate else { continue }
                AdamW.update(&gate.values, gradients: gate.gradient, moments: &moments[k], step: s + 1, lr: lr, settings: settings.adamW)
            }
            let stepTokens = batch.reduce(0) { $0 + $1.tokens.count }
            tokens += stepTokens
            losses.append(loss.mean)
            onStep?(s + 1, loss.mean, stepTokens)
        }
        let gates = expert.modules.map { ($0.module.name, $0.gate?.values ?? []) }
        return PhatGOOSEOutcome(gates: gates, losses: losses, tokens: tokens,
                                wallSeconds: Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9)
    }

    /// A PEFT adapter's LoRA factors as a frozen expert (float32 A [r, d_in], B [d_out, r], PEFT's scaling per module).
    /// Refuses what gate training cannot use: embeddings, modules saved whole, factors that are not finite.
    public static func expert(_ adapter: LoRAAdapter, tensors: TensorSource, name: String) throws -> LoRAParameters {
        guard adapter.replacements.isEmpty, !adapter.modules.contains(where: \.isEmbedding) else {
            throw TesseraError(.unsupported, "\(name): gates are trained for LoRA factors of linear layers only (no modules_to_save, no embeddings)",
                               hint: "name a LoRA adapter of linear layers")
        }
        guard !adapter.modules.isEmpty else { throw TesseraError(.invalidParameter, "\(name) adapts no module", hint: "name a LoRA adapter") }
        var modules: [LoRAModuleParameters] = []
        for m in adapter.modules {
            let a = try tensors.rawTensor(m.aName).floats(name: m.aName), b = try tensors.rawTensor(m.bName).floats(name: m.bName)
            let (aCount, o1) = m.rank.multipliedReportingOverflow(by: m.inFeatures)
            let (bCount, o2) = m.rank.multipliedReportingOverflow(by: m.outFeatures)
            guard !o1, !o2, a.count == aCount, b.count == bCount, a.allSatisfy(\.isFinite), b.allSatisfy(\.isFinite) else {
                throw TesseraError(.invalidParameter, "\(name): the factors of \(m.name) do not fit rank \(m.rank) or are not finite",
                                   hint: "the adapter file is malformed")
            }
            let module = LoRAModuleParameters(module: AdaptableModule(name: m.name, outputs: m.outFeatures, inputs: m.inFeatures), rank: m.rank,
                                              scaling: Float(m.scaling), a: a, b: b)
            module.frozen = true
            modules.append(module)
        }
        return LoRAParameters(modules: modules, dropout: 0)
    }
}
