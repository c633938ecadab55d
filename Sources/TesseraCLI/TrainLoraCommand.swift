import ArgumentParser
import CoreFoundation  // owns `stat` as Foundation imports it on Linux
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraGit
import TesseraIO
import TesseraMath
import TesseraMerge
import TesseraRepository
import TesseraStore
import TesseraTraining

struct TrainLoraCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora",
        abstract: "Train a PEFT LoRA adapter on task files (AdamW on the adapter only).",
        discussion: """
        BASE is anything `tessera eval` takes as a model: a folder, a safetensors
        file with config.json and tokenizer.json beside it, REV:path, or a .gguf.
        Data: --task files in `tessera eval`'s formats, rendered as eval renders
        them (generation: loss on the reference; multiple choice: the correct
        continuation; classification: " " + the label name after the text;
        perplexity: plain text in windows of --max-length). Several --task files
        are mixed and shuffled with --seed. The same command and seed give the
        same adapter bytes. Every --checkpoint-every steps the state is saved in
        DIR/.checkpoint; re-running the same command after an interruption
        resumes there. A finished DIR is replaced only with --force.
        DIR gets adapter_config.json, adapter_model.safetensors and training.json
        (base revision and object ids, data hashes, settings, losses).
        Examples:
          tessera train lora smollm2 --task arc.jsonl --steps 200 -o arc-lora
          tessera train lora HEAD:smollm2 --task a.jsonl --task b.jsonl \\
              --epochs 2 --batch-size 8 --micro-batch-size 2 --lr 1e-4 -o ab
        """
    )

    @Argument(help: "The base model: a folder, a file, REV:path, or a .gguf file.")
    var base: String

    @Option(name: .customLong("task"), help: "A task file (JSONL, docs/task-format.md). Repeatable: the data are mixed.")
    var tasks: [String] = []

    @Option(name: [.customShort("o"), .long], help: "The output adapter folder.")
    var output: String

    @Option(help: "LoRA rank r.") var rank: Int = 8
    @Option(help: "LoRA alpha (scaling alpha / r; default 2 × rank).") var alpha: Double?
    @Option(help: "LoRA dropout on each adapted layer's input.") var dropout: Float = 0
    @Option(help: "Modules to adapt, by short name, comma-separated (default: the attention projections, e.g. q_proj,k_proj,v_proj,o_proj).")
    var targets: String?
    @Option(help: "Optimizer steps.") var steps: Int?
    @Option(help: "Passes over the data (instead of --steps).") var epochs: Int?
    @Option(help: "Sequences per optimizer step.") var batchSize: Int = 8
    @Option(help: "Sequences per forward/backward pass (gradients accumulate over a batch; default: the batch).")
    var microBatchSize: Int?
    @Option(help: "Peak learning rate.") var lr: Double = 2e-4
    @Option(help: "Warm-up: steps (100) or a fraction of the steps (0.1).") var warmup: String = "0"
    @Option(help: "AdamW's decoupled weight decay.") var weightDecay: Double = 0
    @Option(help: "Learning-rate schedule after warm-up: linear, cosine or constant.") var schedule: String = "linear"
    @Option(help: "Clip the adapter's gradient norm to this (0: no clipping).") var maxGradNorm: Double = 0
    @Option(help: "Longest sequence in tokens (default: 512, or the model's window if shorter).") var maxLength: Int?
    @Option(help: "Seed of the initial adapter, the data order and the dropout masks.") var seed: UInt64 = 0
    @Option(help: "Start from this PEFT adapter (DIR or REV:DIR) instead of PEFT's seeded initialisation; its modules, rank and scaling must be the run's.")
    var initAdapter: String?
    @Option(help: "A task file to evaluate on (mean loss); the adapter with the lowest is written.") var evalTask: String?
    @Option(help: "Evaluate every N steps (and after the last).") var evalEvery: Int = 0
    @Option(help: "Save a resumable checkpoint every N steps (0: never).") var checkpointEvery: Int = 50
    @Option(help: "Threads for matrix products (default: $OPENBLAS_NUM_THREADS, else the number of cores).")
    var threads: Int = Linalg.defaultThreads
    @Flag(help: "Replace a finished output folder (only the files a training run writes).") var force = false
    @Flag(help: "Print a JSON summary on stdout.") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func validate() throws {
        if tasks.isEmpty { throw ValidationError("name at least one --task FILE (a JSONL task file, docs/task-format.md)") }
        switch (steps, epochs) {
        case (nil, nil): throw ValidationError("give --steps N or --epochs N")
        case (.some, .some): throw ValidationError("give --steps or --epochs, not both")
        case let (s?, nil) where s <= 0: throw ValidationError("--steps must be positive")
        case let (nil, e?) where e <= 0: throw ValidationError("--epochs must be positive")
        default: break
        }
        if rank <= 0 || rank > 1 << 16 { throw ValidationError("--rank must be between 1 and 65536") }
        if let alpha, !(alpha.isFinite && alpha > 0) { throw ValidationError("--alpha must be a positive number") }
        if !(dropout >= 0 && dropout < 1) { throw ValidationError("--dropout must be in [0, 1)") }
        if batchSize <= 0 { throw ValidationError("--batch-size must be positive") }
        if let m = microBatchSize, m <= 0 || m > batchSize { throw ValidationError("--micro-batch-size must be between 1 and --batch-size") }
        if !(lr.isFinite && lr > 0) { throw ValidationError("--lr must be a positive number") }
        if !(weightDecay.isFinite && weightDecay >= 0) { throw ValidationError("--weight-decay must be zero or positive") }
        if !(maxGradNorm.isFinite && maxGradNorm >= 0) { throw ValidationError("--max-grad-norm must be zero or positive") }
        if LearningRateSchedule(rawValue: schedule) == nil { throw ValidationError("--schedule must be linear, cosine or constant") }
        do { _ = try WarmupSpec(parsing: warmup) } catch let e as TesseraError { throw ValidationError(e.message) }
        if let m = maxLength, m < 2 { throw ValidationError("--max-length must be at least 2") }
        if evalEvery < 0 { throw ValidationError("--eval-every must be zero or positive") }
        if evalEvery > 0 && evalTask == nil { throw ValidationError("--eval-every needs --eval-task FILE") }
        if checkpointEvery < 0 { throw ValidationError("--checkpoint-every must be zero or positive") }
        if threads <= 0 { throw ValidationError("--threads must be positive") }
        if let targets, parsedTargets(targets).isEmpty { throw ValidationError("--targets names no module") }
        if output.isEmpty { throw ValidationError("-o names no folder") }
    }

    func parsedTargets(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        Linalg.setThreads(threads)
        // The output is checked before anything is read or computed: a finished run is not silently replaced.
        let resume = try TrainingOutputFolder.prepare(output, force: force)
        // Every task file is read and checked before the model is loaded.
        for path in tasks + (evalTask.map { [$0] } ?? []) { _ = try UserTask(path: path) }
        let dataHashes = try (tasks + (evalTask.map { [$0] } ?? [])).enumerated().map {
            ($0.element, try Self.sha256(file: $0.element), try UserTask(path: $0.element).name, $0.offset < tasks.count ? "train" : "eval")
        }

        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        defer { resolver.finish() }
        let resolved = try ResolvedModel.resolve(base, resolver: resolver)
        guard case let .causal(lm, tokenizer) = resolved.kind else {
            throw TesseraError(.unsupported, "\(base) is a sentence encoder; `train lora` trains causal language models",
                               hint: "name a Llama, GPT-2 or GPT-Neo model")
        }
        let model = try TrainableModels.make(lm)
        let maxLength = self.maxLength ?? min(512, model.maxSequenceLength)
        guard maxLength <= model.maxSequenceLength else {
            throw TesseraError(.usage, "--max-length \(maxLength) is longer than the model's window (\(model.maxSequenceLength) tokens)",
                               hint: "give --max-length \(model.maxSequenceLength) or less")
        }
        let data = try TrainingDataSet.load(tasks, tokenizer: tokenizer, maxLength: maxLength)
        let evaluation = try evalTask.map { try TrainingDataSet.load([$0], tokenizer: tokenizer, maxLength: maxLength) }

        let order = BatchOrder(count: data.sequences.count, batchSize: batchSize, seed: seed)
        let (epochSteps, overflow) = (epochs ?? 0).multipliedReportingOverflow(by: order.batchesPerEpoch)
        guard !overflow, epochSteps <= 1 << 40 else { throw TesseraError(.usage, "--epochs \(epochs ?? 0) is too many", hint: "give fewer epochs") }
        let totalSteps = steps ?? epochSteps
        let warmupSteps = try WarmupSpec(parsing: warmup).steps(total: totalSteps)
        let targetNames = targets.map(parsedTargets) ?? LoRASettings.defaultTargets(for: model.adaptableModules)
        let lora = LoRASettings(rank: rank, alpha: alpha ?? Double(2 * rank), dropout: dropout, targets: targetNames)
        let settings = TrainingSettings(
            steps: totalSteps, batchSize: batchSize, microBatchSize: microBatchSize, learningRate: lr, warmupSteps: warmupSteps,
            schedule: LearningRateSchedule(rawValue: schedule) ?? .linear, adamW: AdamWSettings(weightDecay: weightDecay),
            maxGradNorm: maxGradNorm, seed: seed, evalEvery: evalEvery, checkpointEvery: checkpointEvery)
        let parameters = try lora.initialParameters(for: model, seed: seed)
        var initRecord = JSONValue.string("peft: A kaiming-uniform(a=sqrt(5)) from the seed, B zero")
        if let initAdapter {
            let folder = try resolver.checkpoint(initAdapter).adapterFolder()
            try Self.load(folder, into: parameters)
            initRecord = .object([("adapter", .string(initAdapter)),
                                  ("sha256", .string(try EvalAdapter.contentHash(config: folder.configBytes, tensors: folder.tensors)))])
        }
        let trainer = try LoRATrainer(model: model, data: data, evaluation: evaluation, parameters: parameters, settings: settings)

        let baseRecord = try Self.baseProvenance(base, resolver: resolver, resolved: resolved)
        let hyperparameters = Self.hyperparameters(lora: lora, settings: settings, maxLength: maxLength, epochs: epochs, warmup: warmup,
                                                   modules: parameters.modules.map(\.module.name), initialization: initRecord)
        // Each file's task name too: an expert library reads what an expert was trained on from here.
        let dataRecord = JSONValue.array(dataHashes.map { .object([("path", .string($0.0)), ("sha256", .string($0.1)), ("task", .string($0.2)), ("role", .string($0.3))]) })
        // What a checkpoint must agree with to be resumed: the base, the data's bytes and every setting.
        let fingerprint = SHA256Hasher.hex(Array(JSONValue.object([
            ("base", .string(base)), ("base_record", baseRecord), ("data", dataRecord), ("hyperparameters", hyperparameters),
        ]).serialized().utf8))

        let checkpointPath = TrainingCheckpoint.path(in: output)
        var resumedFrom: Int?
        if resume { resumedFrom = try TrainingCheckpoint.load(into: trainer, fingerprint: fingerprint, from: checkpointPath) }
        trainer.saveCheckpoint = { try TrainingCheckpoint.save($0, fingerprint: fingerprint, to: checkpointPath) }
        let progress = TrainingProgress(total: totalSteps, done: trainer.state.step)
        trainer.onStep = { state, tokens in progress.step(state, tokens: tokens) }
        let outcome = try trainer.run()
        progress.finish()

        let wall = outcome.wallSeconds
        var provenance: [(String, JSONValue)] = [
            ("format", .string("tessera-train-lora-v1")), ("tessera_version", .string(TesseraVersion.string)),
            ("base", baseRecord), ("data", dataRecord),
            ("data_sequences", .array(data.files.map(Self.fileRecord))),
            ("eval_data_sequences", evaluation.map { .array($0.files.map(Self.fileRecord)) } ?? .null),
            ("hyperparameters", hyperparameters),
            ("steps", .int(outcome.state.step)), ("tokens", .int(outcome.state.tokens)),
            ("final_loss", .double(outcome.finalLoss)),
            ("best_step", outcome.bestStep.map { .int($0) } ?? .null), ("best_eval_loss", outcome.bestLoss.map { .double($0) } ?? .null),
            ("losses", .array(outcome.state.losses.map { .double($0) })),
            ("evaluations", .array(outcome.state.evaluations.map { .object([("step", .int($0.step)), ("loss", .double($0.loss))]) })),
            ("wall_seconds", .double(wall)), ("resumed_from_step", resumedFrom.map { .int($0) } ?? .null),
        ]
        if outcome.bestStep != nil { provenance.append(("adapter_from_step", .int(outcome.bestStep ?? 0))) }
        let config = Self.adapterConfig(lora: lora, base: base, fanInFanOut: resolved.isConv1DModel)
        try TrainingOutputFolder.write(output, parameters: outcome.parameters, config: config, training: .object(provenance),
                                       checkpoint: checkpointPath)
        let totalWall = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        if json {
            let rate = progress.rate(fallbackTokens: outcome.state.tokens, fallbackSteps: outcome.state.step, wall: wall)
            print(JSONValue.object([
                ("output", .string(output)), ("steps", .int(outcome.state.step)), ("tokens", .int(outcome.state.tokens)),
                ("final_loss", .double(outcome.finalLoss)), ("best_eval_loss", outcome.bestLoss.map { .double($0) } ?? .null),
                ("best_step", outcome.bestStep.map { .int($0) } ?? .null),
                ("losses", .array(outcome.state.losses.map { .double($0) })),
                ("tokens_per_second", .double(rate.tokensPerSecond)), ("seconds_per_step", .double(rate.secondsPerStep)),
                ("wall_seconds", .double(wall)), ("resumed_from_step", resumedFrom.map { .int($0) } ?? .null),
            ]).serialized())
        } else {
            var line = "trained \(output): \(outcome.state.step) steps, \(outcome.state.tokens) tokens, final loss \(String(format: "%.4f", outcome.finalLoss))"
            if let b = outcome.bestLoss, let s = outcome.bestStep { line += ", best eval loss \(String(format: "%.4f", b)) at step \(s)" }
            line += String(format: ", %.1f s", totalWall)
            print(line)
        }
    }

    /// An adapter's factors as the starting point: the same modules, ranks and scalings as the run, finite values.
    static func load(_ folder: AdapterFolder, into parameters: LoRAParameters) throws {
        let adapter = folder.adapter
        let hint = "give an adapter with the run's --targets, --rank and --alpha (or train without --init-adapter)"
        guard adapter.replacements.isEmpty, !adapter.modules.contains(where: \.isEmbedding) else {
            throw TesseraError(.unsupported, "\(folder.name): --init-adapter takes LoRA factors of linear layers only (no modules_to_save, no embeddings)", hint: hint)
        }
        let wanted = Set(parameters.modules.map(\.module.name))
        if let extra = adapter.modules.first(where: { !wanted.contains($0.name) }) {
            throw TesseraError(.invalidParameter, "\(folder.name) adapts \(extra.name), which the run does not train", hint: hint)
        }
        let byName = Dictionary(adapter.modules.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for m in parameters.modules {
            guard let given = byName[m.module.name] else {
                throw TesseraError(.invalidParameter, "\(folder.name) has no factors for \(m.module.name)", hint: hint)
            }
            guard given.rank == m.rank, given.inFeatures == m.module.inputs, given.outFeatures == m.module.outputs,
                  abs(given.scaling - Double(m.scaling)) <= 1e-6 * abs(given.scaling) else {
                throw TesseraError(.invalidParameter, "\(folder.name): \(m.module.name) has rank \(given.rank), shape [\(given.outFeatures), \(given.inFeatures)] and scaling \(given.scaling); the run has rank \(m.rank), [\(m.module.outputs), \(m.module.inputs)] and \(m.scaling)", hint: hint)
            }
            let a = try folder.tensors.rawTensor(given.aName).floats(name: given.aName)
            let b = try folder.tensors.rawTensor(given.bName).floats(name: given.bName)
            guard a.count == m.a.count, b.count == m.b.count, a.allSatisfy(\.isFinite), b.allSatisfy(\.isFinite) else {
                throw TesseraError(.invalidParameter, "\(folder.name): the factors of \(m.module.name) do not fit it or are not finite", hint: hint)
            }
            m.a = a
            m.b = b
        }
    }

    static func fileRecord(_ f: TrainingDataSet.File) -> JSONValue {
        .object([("path", .string(f.path)), ("task", .string(f.taskName)), ("type", .string(f.kind.rawValue)), ("examples", .int(f.examples)),
                 ("sequences", .int(f.sequences)), ("truncated", .int(f.truncated)), ("dropped", .int(f.dropped))])
    }

    static func hyperparameters(lora: LoRASettings, settings: TrainingSettings, maxLength: Int, epochs: Int?, warmup: String,
                                modules: [String], initialization: JSONValue) -> JSONValue {
        .object([
            ("rank", .int(lora.rank)), ("alpha", .double(lora.alpha)), ("dropout", .double(Double(lora.dropout))),
            ("target_modules", .array(lora.targets.map { .string($0) })), ("modules", .int(modules.count)),
            ("steps", .int(settings.steps)), ("epochs", epochs.map { .int($0) } ?? .null),
            ("batch_size", .int(settings.batchSize)), ("micro_batch_size", .int(settings.microBatchSize)),
            ("learning_rate", .double(settings.learningRate)), ("schedule", .string(settings.schedule.rawValue)),
            ("warmup", .string(warmup)), ("warmup_steps", .int(settings.warmupSteps)),
            ("optimizer", .object([("name", .string("adamw")), ("beta1", .double(settings.adamW.beta1)), ("beta2", .double(settings.adamW.beta2)),
                                   ("epsilon", .double(settings.adamW.epsilon)), ("weight_decay", .double(settings.adamW.weightDecay))])),
            ("max_grad_norm", .double(settings.maxGradNorm)), ("max_length", .int(maxLength)), ("seed", .string(String(settings.seed))),
            ("eval_every", .int(settings.evalEvery)), ("checkpoint_every", .int(settings.checkpointEvery)),
            ("init", initialization),
        ])
    }

    /// adapter_config.json with the keys PEFT 0.21 writes for a LoRA on a causal LM.
    static func adapterConfig(lora: LoRASettings, base: String, fanInFanOut: Bool) -> JSONValue {
        .object([
            ("alora_invocation_tokens", .null), ("alpha_pattern", .object([])), ("arrow_config", .null), ("auto_mapping", .null),
            ("base_model_name_or_path", .string(base)), ("bias", .string("none")), ("corda_config", .null),
            ("ensure_weight_tying", .bool(false)), ("eva_config", .null), ("exclude_modules", .null), ("fan_in_fan_out", .bool(fanInFanOut)),
            ("inference_mode", .bool(true)), ("init_lora_weights", .bool(true)), ("kasa_config", .null), ("layer_replication", .null),
            ("layers_pattern", .null), ("layers_to_transform", .null), ("loftq_config", .object([])),
            ("lora_alpha", lora.alpha == lora.alpha.rounded() && abs(lora.alpha) < 1e15 ? .int(Int(lora.alpha)) : .double(lora.alpha)),
            ("lora_bias", .bool(false)), ("lora_dropout", .double(Double(lora.dropout))), ("lora_ga_config", .null),
            ("megatron_config", .null), ("megatron_core", .string("megatron.core")), ("modules_to_save", .null),
            ("monteclora_config", .null), ("peft_type", .string("LORA")), ("peft_version", .string("0.21.2")),
            ("qalora_group_size", .int(16)), ("r", .int(lora.rank)), ("rank_pattern", .object([])), ("revision", .null),
            ("target_modules", .array(lora.targets.sorted().map { .string($0) })), ("target_parameters", .null),
            ("task_type", .string("CAUSAL_LM")), ("trainable_token_indices", .null), ("use_bdlora", .null), ("use_dora", .bool(false)),
            ("use_qalora", .bool(false)), ("use_rslora", .bool(false)), ("velora_config", .null),
        ])
    }

    /// The base as named, and for a model read at a revision the commit and each tensor's object id.
    static func baseProvenance(_ spec: String, resolver: CheckpointResolver, resolved: ResolvedModel) throws -> JSONValue {
        var pairs: [(String, JSONValue)] = [("name", .string(spec))]
        var st = stat()
        if stat(spec, &st) == 0 {
            // Weights on disk: the SHA-256 of each weight file (a folder's checkpoint files, or the file named).
            pairs.append(("source", .string("path")))
            let isFolder = (st.st_mode & S_IFMT) == S_IFDIR
            let names = isFolder
                ? ((try? FileManager.default.contentsOfDirectory(atPath: spec)) ?? []).filter { n in
                    [".safetensors", ".gguf", ".bin", ".pt"].contains { n.hasSuffix($0) } }.sorted()
                : [(spec as NSString).lastPathComponent]
            let folder = isFolder ? spec : (spec as NSString).deletingLastPathComponent
            pairs.append(("files", .array(try names.map { name in
                let path = folder.isEmpty ? name : folder + "/" + name
                return .object([("name", .string(name)), ("sha256", .string(try sha256(file: path)))])
            })))
            return .object(pairs)
        }
        guard let repository = resolver.repository else {
            pairs.append(("source", .string("path")))
            return .object(pairs)
        }
        let rev = spec.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? spec
        pairs.append(("source", .string("revision")))
        pairs.append(("revision", .string(rev)))
        pairs.append(("commit", repository.git.resolveCommit(rev).map { .string($0) } ?? .null))
        let checkpoint = try resolver.checkpoint(orRevision: spec)
        var stored: [StoredCheckpoint] = []
        if let s = checkpoint.source as? StoredCheckpoint { stored = [s] }
        if let s = checkpoint.source as? ShardedSource { stored = s.shards.compactMap { $0.source as? StoredCheckpoint } }
        var objects: [(String, JSONValue)] = []
        for s in stored {
            for t in s.manifest.tensors { objects.append((t.name, .string(t.stored.objectID))) }
        }
        pairs.append(("tensor_objects", .object(objects)))
        return .object(pairs)
    }

    /// The SHA-256 of a file, read in pieces (a base's weights are hundreds of megabytes).
    static func sha256(file path: String) throws -> String {
        let file = try FileDescriptor.openRegularFile(path)
        let hasher = SHA256Hasher()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let n = try file.read(into: buffer)
            if n == 0 { break }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return hasher.finalizeHex()
    }
}

extension ResolvedModel {
    /// GPT-2 stores its projections as Conv1D ([in, out]): PEFT's `fan_in_fan_out`.
    var isConv1DModel: Bool {
        if case let .causal(lm, _) = kind { return lm is GPT2Model }
        return false
    }
}

/// The step counter on stderr (a terminal only): step/steps, rate, ETA, then the last loss and tokens/s.
final class TrainingProgress {
    let total: Int
    let enabled: Bool
    let startDone: Int
    let start = DispatchTime.now().uptimeNanoseconds
    var tokens = 0
    var drew = false
    /// When each of this process's steps ended, and its tokens.
    var ends: [UInt64] = []
    var stepTokens: [Int] = []

    init(total: Int, done: Int, enabled: Bool = isatty(2) != 0) {
        self.total = total
        startDone = done
        self.enabled = enabled
    }

    func step(_ state: TrainingState, tokens stepTokens: Int) {
        tokens += stepTokens
        ends.append(DispatchTime.now().uptimeNanoseconds)
        self.stepTokens.append(stepTokens)
        guard enabled else { return }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        // The rate and ETA count this process's steps only (a resumed run starts its clock at the resume).
        let done = state.step - startDone
        var line = ProgressReporter.render(label: "train", done: done, total: total - startDone, elapsedSeconds: elapsed)
        line = line.replacingOccurrences(of: "] \(done)/\(total - startDone)", with: "] \(state.step)/\(total)")
        // Steps of real models take seconds: say seconds per step rather than "0.0/s".
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        if rate > 0, rate < 1 {
            line = line.replacingOccurrences(of: "  \(String(format: "%.1f", rate))/s", with: String(format: "  %.1f s/step", 1 / rate))
        }
        line += String(format: "  loss %.4f  %.0f tok/s", state.losses.last ?? .nan, elapsed > 0 ? Double(tokens) / elapsed : 0)
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        drew = true
    }

    func finish() {
        if drew { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    /// Tokens/s and seconds per step over this process's steps after its first (a warm-up: buffers, caches), when
    /// there are two or more; else over the whole run.
    func rate(fallbackTokens: Int, fallbackSteps: Int, wall: Double) -> (tokensPerSecond: Double, secondsPerStep: Double) {
        if ends.count >= 2, let first = ends.first, let last = ends.last, last > first {
            let seconds = Double(last - first) / 1e9
            let tokens = stepTokens.dropFirst().reduce(0, +)
            return (Double(tokens) / seconds, seconds / Double(ends.count - 1))
        }
        return (wall > 0 ? Double(fallbackTokens) / wall : 0, fallbackSteps > 0 ? wall / Double(fallbackSteps) : 0)
    }
}
