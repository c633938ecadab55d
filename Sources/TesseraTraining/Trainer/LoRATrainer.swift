import Foundation
import TesseraCore
import TesseraIO

/// What LoRA modules to train: PEFT's `LoraConfig` fields the trainer uses.
public struct LoRASettings: Sendable, Equatable {
    public var rank: Int
    public var alpha: Double
    public var dropout: Float
    /// Short module names (`q_proj`), PEFT's `target_modules` list.
    public var targets: [String]

    public init(rank: Int = 8, alpha: Double = 16, dropout: Float = 0, targets: [String]) {
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = targets
    }

    /// PEFT's scaling without rsLoRA: alpha / r.
    public var scaling: Float { Float(alpha / Double(rank)) }

    /// The attention projections each architecture's modules are called, in PEFT's order of preference: what
    /// `--targets` defaults to (Llama and GPT-Neo: q, k, v, o; GPT-2: the fused c_attn).
    public static let defaultTargetChoices: [[String]] = [
        ["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "k_proj", "v_proj", "out_proj"], ["c_attn"], ["query", "key", "value"],
    ]

    public static func defaultTargets(for modules: [AdaptableModule]) -> [String] {
        let present = Set(modules.map(\.shortName))
        for choice in defaultTargetChoices where choice.allSatisfy(present.contains) { return choice }
        return []
    }

    /// PEFT's initialisation (`reset_lora_parameters` with `init_lora_weights=True`): A by
    /// `kaiming_uniform_(a=√5)`, i.e. uniform in ±gain·√(3/fan_in) with gain = √(2/(1+a²)), which is ±1/√in; B zero.
    /// A's values come from one seeded stream, module after module in the model's order.
    public func initialParameters(for model: any TrainableLanguageModel, seed: UInt64) throws -> LoRAParameters {
        guard rank > 0 else { throw TesseraError(.usage, "the rank must be positive", hint: "e.g. --rank 8") }
        let wanted = Set(targets)
        let chosen = model.adaptableModules.filter { wanted.contains($0.shortName) }
        let found = Set(chosen.map(\.shortName))
        if let missing = targets.first(where: { !found.contains($0) }) {
            let names = Array(Set(model.adaptableModules.map(\.shortName))).sorted()
            throw TesseraError(.invalidParameter, "no module of the model is called '\(missing)'",
                               hint: "--targets takes short names of the model's linear layers: \(names.joined(separator: ", "))")
        }
        guard !chosen.isEmpty else {
            throw TesseraError(.invalidParameter, "no module to train", hint: "name modules with --targets (e.g. q_proj,v_proj)")
        }
        var rng = SplitMix64(seed: SplitMix64.derive(seed, 0x696E_6974))
        var modules: [LoRAModuleParameters] = []
        for m in chosen {
            let (aCount, o1) = rank.multipliedReportingOverflow(by: m.inputs)
            let (bCount, o2) = rank.multipliedReportingOverflow(by: m.outputs)
            guard !o1, !o2, aCount <= 1 << 31, bCount <= 1 << 31 else {
                throw TesseraError(.invalidParameter, "rank \(rank) on \(m.name) is too large", hint: "use a smaller --rank")
            }
            let bound = 1 / Float(m.inputs).squareRoot()
            let a = (0..<aCount).map { _ in -bound + 2 * bound * rng.nextUnitFloat() }
            modules.append(LoRAModuleParameters(module: m, rank: rank, scaling: scaling, a: a, b: [Float](repeating: 0, count: bCount)))
        }
        return LoRAParameters(modules: modules, dropout: dropout)
    }
}

/// The optimisation: how many steps, batches, learning rate and its schedule, AdamW's settings, the seed.
public struct TrainingSettings: Sendable, Equatable {
    public var steps: Int
    public var batchSize: Int
    public var microBatchSize: Int
    public var learningRate: Double
    public var warmupSteps: Int
    public var schedule: LearningRateSchedule
    public var adamW: AdamWSettings
    /// torch's `clip_grad_norm_` on every adapter gradient at once (0: no clipping).
    public var maxGradNorm: Double
    public var seed: UInt64
    /// Evaluate every N steps (and after the last) when an evaluation set is given; 0: only after the last.
    public var evalEvery: Int
    /// Write a checkpoint every N steps (0: never).
    public var checkpointEvery: Int

    public init(steps: Int, batchSize: Int = 8, microBatchSize: Int? = nil, learningRate: Double = 2e-4, warmupSteps: Int = 0,
                schedule: LearningRateSchedule = .linear, adamW: AdamWSettings = AdamWSettings(), maxGradNorm: Double = 0,
                seed: UInt64 = 0, evalEvery: Int = 0, checkpointEvery: Int = 0) {
        self.steps = steps
        self.batchSize = batchSize
        self.microBatchSize = microBatchSize ?? batchSize
        self.learningRate = learningRate
        self.warmupSteps = warmupSteps
        self.schedule = schedule
        self.adamW = adamW
        self.maxGradNorm = maxGradNorm
        self.seed = seed
        self.evalEvery = evalEvery
        self.checkpointEvery = checkpointEvery
    }
}

/// Where a run stands: everything a resumed run needs to continue bit for bit (the data order and the dropout
/// masks are functions of the seed and the step, so the step is the generators' state).
public struct TrainingState {
    public var step = 0
    /// Mean loss of each step's batch.
    public var losses: [Double] = []
    /// Tokens read (every position of every sequence) so far.
    public var tokens = 0
    /// Mean evaluation loss after each evaluation: (step, loss).
    public var evaluations: [(step: Int, loss: Double)] = []
    /// The lowest evaluation loss and the factors that had it (module order, A then B).
    public var best: (step: Int, loss: Double, factors: [[Float]])?
    /// Seconds spent training by the earlier runs of a resumed run.
    public var elapsedBefore: Double = 0

    public init() {}
}

/// What a finished run hands back: the adapter to write (the best evaluated one, else the last) and the numbers
/// for its provenance.
public struct TrainingOutcome {
    public var parameters: LoRAParameters
    public var state: TrainingState
    public var finalLoss: Double
    public var bestStep: Int?
    public var bestLoss: Double?
    public var wallSeconds: Double
    public var resumedFromStep: Int?
}

/// The LoRA training loop on any `TrainableLanguageModel`: per step, the gradients of the batch's mean loss (summed
/// over micro-batches, each scaled by 1 / the batch's counted targets), optional clipping, then AdamW at the
/// schedule's rate. Deterministic for a seed; checkpoints every `checkpointEvery` steps through `checkpoints`.
public final class LoRATrainer {
    public let model: any TrainableLanguageModel
    public let data: TrainingDataSet
    public let evaluation: TrainingDataSet?
    public let settings: TrainingSettings
    public let parameters: LoRAParameters
    public private(set) var moments: [(a: AdamWMoments, b: AdamWMoments)]
    public private(set) var state = TrainingState()
    /// Called after each step with the state (progress display).
    public var onStep: ((TrainingState, _ stepTokens: Int) -> Void)?
    /// Called to write a checkpoint (the trainer passes itself); nil: none are written.
    public var saveCheckpoint: ((LoRATrainer) throws -> Void)?
    /// Stops after this many steps have been taken in this process (tests of resumption); nil: run to the end.
    public var stopAfterSteps: Int?

    public init(model: any TrainableLanguageModel, data: TrainingDataSet, evaluation: TrainingDataSet? = nil,
                parameters: LoRAParameters, settings: TrainingSettings) throws {
        guard settings.steps > 0 else { throw TesseraError(.usage, "training needs at least one step", hint: "give --steps N or --epochs N") }
        guard settings.batchSize > 0, settings.microBatchSize > 0, settings.microBatchSize <= settings.batchSize else {
            throw TesseraError(.usage, "the batch size and micro-batch size must be positive, the micro-batch no larger than the batch",
                               hint: "e.g. --batch-size 8 --micro-batch-size 2")
        }
        guard !data.sequences.isEmpty else { throw TesseraError(.invalidParameter, "no training sequence", hint: "give a --task file with examples") }
        for set in [data] + (evaluation.map { [$0] } ?? []) {
            for s in set.sequences {
                guard s.tokens.count <= model.maxSequenceLength else {
                    throw TesseraError(.invalidParameter, "a sequence of \(s.tokens.count) tokens is longer than the model's \(model.maxSequenceLength)",
                                       hint: "lower --max-length to at most \(model.maxSequenceLength)")
                }
                guard s.tokens.allSatisfy({ $0 >= 0 && Int($0) < model.vocabularySize }),
                      s.targets.allSatisfy({ $0 == TrainingSequence.ignored || ($0 >= 0 && Int($0) < model.vocabularySize) }) else {
                    throw TesseraError(.invalidParameter, "the tokenizer gives ids the model does not have (its vocabulary has \(model.vocabularySize))",
                                       hint: "train with the model's own tokenizer")
                }
            }
        }
        self.model = model
        self.data = data
        self.evaluation = evaluation
        self.settings = settings
        self.parameters = parameters
        moments = parameters.modules.map { (AdamWMoments(count: $0.a.count), AdamWMoments(count: $0.b.count)) }
    }

    public var order: BatchOrder { BatchOrder(count: data.sequences.count, batchSize: settings.batchSize, seed: settings.seed) }

    /// Puts a checkpoint's state back (factors, moments, step, losses...).
    public func restore(state: TrainingState, factors: [(a: [Float], b: [Float])], moments: [(a: AdamWMoments, b: AdamWMoments)]) throws {
        guard factors.count == parameters.modules.count, moments.count == parameters.modules.count,
              state.step >= 0, state.step <= settings.steps, state.losses.count == state.step else {
            throw TesseraError(.invalidParameter, "the checkpoint does not fit this run", hint: "remove the output's .checkpoint folder to start over")
        }
        for (k, m) in parameters.modules.enumerated() {
            guard factors[k].a.count == m.a.count, factors[k].b.count == m.b.count,
                  moments[k].a.firstMoment.count == m.a.count, moments[k].a.secondMoment.count == m.a.count,
                  moments[k].b.firstMoment.count == m.b.count, moments[k].b.secondMoment.count == m.b.count else {
                throw TesseraError(.invalidParameter, "the checkpoint's \(m.module.name) does not fit this run",
                                   hint: "remove the output's .checkpoint folder to start over")
            }
        }
        for (k, m) in parameters.modules.enumerated() {
            m.a = factors[k].a
            m.b = factors[k].b
        }
        self.moments = moments
        self.state = state
    }

    /// The mean loss of a data set under the current adapter (forward only, no dropout).
    public func loss(of set: TrainingDataSet) throws -> Double {
        var total = LossSum()
        var start = 0
        while start < set.sequences.count {
            let end = min(set.sequences.count, start + settings.microBatchSize)
            total = total + (try model.loss(Array(set.sequences[start..<end])))
            start = end
        }
        return total.mean
    }

    /// Runs from the current step to the end (or to `stopAfterSteps`).
    public func run() throws -> TrainingOutcome {
        let started = DispatchTime.now().uptimeNanoseconds
        let resumedFrom = state.step > 0 ? state.step : nil
        try model.attach(parameters)
        defer { try? model.attach(nil) }
        let order = self.order
        var taken = 0
        while state.step < settings.steps {
            if let stop = stopAfterSteps, taken >= stop { break }
            let stepTokens = try step(order: order)
            taken += 1
            onStep?(state, stepTokens)
            let s = state.step
            if let evaluation, (settings.evalEvery > 0 && s % settings.evalEvery == 0) || s == settings.steps {
                try evaluate(evaluation)
            }
            if let saveCheckpoint, settings.checkpointEvery > 0, s % settings.checkpointEvery == 0, s < settings.steps {
                let now = DispatchTime.now().uptimeNanoseconds
                let saved = state.elapsedBefore
                state.elapsedBefore += Double(now - started) / 1e9
                defer { state.elapsedBefore = saved }
                try saveCheckpoint(self)
            }
        }
        let wall = state.elapsedBefore + Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let out = LoRAParameters(modules: parameters.modules.map {
            LoRAModuleParameters(module: $0.module, rank: $0.rank, scaling: $0.scaling, a: $0.a, b: $0.b)
        }, dropout: parameters.dropout)
        if let best = state.best {
            for (k, m) in out.modules.enumerated() {
                m.a = best.factors[2 * k]
                m.b = best.factors[2 * k + 1]
            }
        }
        return TrainingOutcome(parameters: out, state: state, finalLoss: state.losses.last ?? .nan, bestStep: state.best?.step,
                               bestLoss: state.best?.loss, wallSeconds: wall, resumedFromStep: resumedFrom)
    }

    /// One optimizer step; returns the tokens it read.
    func step(order: BatchOrder) throws -> Int {
        let s = state.step
        let batch = order.batch(step: s).map { data.sequences[$0] }
        let counted = batch.reduce(0) { $0 + $1.countedTargets }
        parameters.zeroGradients()
        var loss = LossSum()
        if counted > 0 {
            let scale = 1 / Float(counted)
            var start = 0, micro = 0
            while start < batch.count {
                let end = min(batch.count, start + settings.microBatchSize)
                let seed = SplitMix64.derive(settings.seed, 0x6472_6F70, UInt64(s), UInt64(micro))
                loss = loss + (try model.accumulateGradients(Array(batch[start..<end]), lossScale: scale, dropoutSeed: seed))
                start = end
                micro += 1
            }
        }
        if settings.maxGradNorm > 0 { clipGradients(maxNorm: settings.maxGradNorm) }
        let lr = settings.schedule.rate(base: settings.learningRate, step: s, warmup: settings.warmupSteps, total: settings.steps)
        for (k, m) in parameters.modules.enumerated() {
            AdamW.update(&m.a, gradients: m.gradientA, moments: &moments[k].a, step: s + 1, lr: lr, settings: settings.adamW)
            AdamW.update(&m.b, gradients: m.gradientB, moments: &moments[k].b, step: s + 1, lr: lr, settings: settings.adamW)
        }
        guard loss.sum.isFinite else {
            throw TesseraError(.invalidParameter, "the loss is not finite at step \(s + 1) (\(loss.sum))",
                               hint: "lower the learning rate (--lr) or check the data")
        }
        let tokens = batch.reduce(0) { $0 + $1.tokens.count }
        state.step = s + 1
        state.losses.append(loss.mean)
        state.tokens += tokens
        return tokens
    }

    /// torch.nn.utils.clip_grad_norm_: the norm of all gradients together; scaled by max/(norm + 1e-6) when above.
    func clipGradients(maxNorm: Double) {
        var squares = 0.0
        for m in parameters.modules {
            for g in m.gradientA { squares += Double(g) * Double(g) }
            for g in m.gradientB { squares += Double(g) * Double(g) }
        }
        let norm = Float(squares.squareRoot())
        let coefficient = min(1, Float(maxNorm) / (norm + 1e-6))
        guard coefficient < 1 else { return }
        for m in parameters.modules {
            for i in m.gradientA.indices { m.gradientA[i] *= coefficient }
            for i in m.gradientB.indices { m.gradientB[i] *= coefficient }
        }
    }

    func evaluate(_ set: TrainingDataSet) throws {
        let loss = try self.loss(of: set)
        state.evaluations.append((state.step, loss))
        // The first of equal losses is kept: the earlier adapter, fewer steps from the base.
        if loss.isFinite, state.best.map({ loss < $0.loss }) ?? true {
            state.best = (state.step, loss, parameters.modules.flatMap { [$0.a, $0.b] })
        }
    }
}
