import ArgumentParser
import CoreFoundation  // owns `stat` as Foundation imports it on Linux
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMath
import TesseraMerge
import TesseraRepository
import TesseraTraining

/// `tessera train gates`: PhatGOOSE's gates for one LoRA expert (base and expert frozen, a sigmoid gate per
/// adapted module trained on the expert's own data), written as the file the PhatGOOSE router reads.
struct TrainGatesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gates",
        abstract: "Train the PhatGOOSE gates of a LoRA expert (base and expert frozen).",
        discussion: """
        Every module the adapter adapts gets a gate g (one value per input,
        starting at 0) and its output becomes x·Wᵀ + σ(g·x)·s·B·A·x per token.
        Only the gates learn, on the expert's own --task files (rendered as
        `tessera train lora` renders them), with mttl's defaults: 100 steps, AdamW
        at lr 1e-3 without weight decay, linear warm-up over 10 % of the steps
        then linear decay, batches of 4; no LoRA dropout. The same command and
        seed give the same bytes. The output is a safetensors file with one F32
        tensor <module>.gate [d_in] per module; an existing file is replaced
        only with --force.
        Example:
          tessera train gates smollm2 --adapter experts/arc --task arc.jsonl \\
              -o experts/arc/gates.safetensors
        """
    )

    @Argument(help: "The base model: a folder, a file, REV:path, or a .gguf file.")
    var base: String

    @Option(help: "The expert: a PEFT adapter folder or REV:folder.") var adapter: String

    @Option(name: .customLong("task"), help: "The expert's training data (JSONL task file). Repeatable.")
    var tasks: [String] = []

    @Option(name: [.customShort("o"), .long], help: "The output gates file (.safetensors).") var output: String

    @Option(help: "Optimizer steps.") var steps: Int = 100
    @Option(help: "Peak learning rate.") var lr: Double = 1e-3
    @Option(help: "Warm-up as a fraction of the steps (rounded down, as mttl does).") var warmupRatio: Double = 0.1
    @Option(help: "Sequences per optimizer step.") var batchSize: Int = 4
    @Option(help: "Sequences per forward/backward pass (default: the batch).") var microBatchSize: Int?
    @Option(help: "Longest sequence in tokens (default: 512, or the model's window if shorter).") var maxLength: Int?
    @Option(help: "Seed of the data order.") var seed: UInt64 = 42
    @Option(help: "Threads for matrix products (default: $OPENBLAS_NUM_THREADS, else the number of cores).")
    var threads: Int = Linalg.defaultThreads
    @Flag(help: "Replace an existing output file.") var force = false
    @Flag(help: "Print a JSON summary on stdout.") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func validate() throws {
        if tasks.isEmpty { throw ValidationError("name at least one --task FILE (the expert's training data)") }
        if steps <= 0 { throw ValidationError("--steps must be positive") }
        if !(lr.isFinite && lr > 0) { throw ValidationError("--lr must be a positive number") }
        if !(warmupRatio.isFinite && warmupRatio >= 0 && warmupRatio < 1) { throw ValidationError("--warmup-ratio must be in [0, 1)") }
        if batchSize <= 0 { throw ValidationError("--batch-size must be positive") }
        if let m = microBatchSize, m <= 0 || m > batchSize { throw ValidationError("--micro-batch-size must be between 1 and --batch-size") }
        if let m = maxLength, m < 2 { throw ValidationError("--max-length must be at least 2") }
        if threads <= 0 { throw ValidationError("--threads must be positive") }
        if output.isEmpty { throw ValidationError("-o names no file") }
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        Linalg.setThreads(threads)
        // The output is checked before anything is read or computed.
        var st = stat()
        if lstat(output, &st) == 0 {
            if (st.st_mode & S_IFMT) == S_IFDIR {
                throw TesseraError(.conflict, "\(output) is a folder; nothing was written", hint: "name the gates file itself (-o DIR/gates.safetensors)")
            }
            if !force { throw TesseraError(.conflict, "\(output) exists; nothing was written", hint: "choose another output (-o), or add --force to replace it") }
        }
        for path in tasks { _ = try UserTask(path: path) }
        let dataHashes = try tasks.map { ($0, try TrainLoraCommand.sha256(file: $0)) }

        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        defer { resolver.finish() }
        let resolved = try ResolvedModel.resolve(base, resolver: resolver)
        guard case let .causal(lm, tokenizer) = resolved.kind else {
            throw TesseraError(.unsupported, "\(base) is a sentence encoder; `train gates` trains gates on causal language models",
                               hint: "name a Llama, GPT-2 or GPT-Neo model")
        }
        let model = try TrainableModels.make(lm)
        let folder = try resolver.checkpoint(adapter).adapterFolder()
        let expert = try PhatGOOSEGateTrainer.expert(folder.adapter, tensors: folder.tensors, name: folder.name)
        let maxLength = self.maxLength ?? min(512, model.maxSequenceLength)
        guard maxLength <= model.maxSequenceLength else {
            throw TesseraError(.usage, "--max-length \(maxLength) is longer than the model's window (\(model.maxSequenceLength) tokens)",
                               hint: "give --max-length \(model.maxSequenceLength) or less")
        }
        let data = try TrainingDataSet.load(tasks, tokenizer: tokenizer, maxLength: maxLength)
        let settings = PhatGOOSESettings(steps: steps, learningRate: lr, warmupRatio: warmupRatio, batchSize: batchSize,
                                         microBatchSize: microBatchSize, seed: seed)
        let trainer = try PhatGOOSEGateTrainer(model: model, expert: expert, data: data, settings: settings)
        let progress = ProgressReporter(label: "tessera: training gates", total: steps)
        trainer.onStep = { step, _, _ in progress.update(completed: step) }
        let outcome = try trainer.run()
        progress.finish()

        let file = outcome.file(settings: settings, metadata: [
            ("base", base), ("expert", adapter), ("expert_sha256", try EvalAdapter.contentHash(config: folder.configBytes, tensors: folder.tensors)),
            ("data", dataHashes.map { "\($0.0):\($0.1)" }.joined(separator: ",")), ("max_length", String(maxLength)),
            ("losses", outcome.losses.map { String($0) }.joined(separator: ",")), ("tessera_version", TesseraVersion.string),
        ])
        let parent = (output as NSString).deletingLastPathComponent
        try FileSystem.writeAtomically(try file.encoded(), to: output, tmpDir: parent.isEmpty ? "." : parent)
        let wall = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        if json {
            print(JSONValue.object([
                ("output", .string(output)), ("modules", .int(outcome.gates.count)), ("steps", .int(steps)),
                ("warmup_steps", .int(settings.warmupSteps)), ("tokens", .int(outcome.tokens)),
                ("final_loss", .double(outcome.losses.last ?? .nan)), ("losses", .array(outcome.losses.map { .double($0) })),
                ("training_seconds", .double(outcome.wallSeconds)), ("wall_seconds", .double(wall)),
            ]).serialized())
        } else {
            print("trained \(output): gates for \(outcome.gates.count) modules, \(steps) steps, \(outcome.tokens) tokens, final loss "
                  + String(format: "%.4f", outcome.losses.last ?? .nan) + String(format: ", %.1f s", wall))
        }
    }
}
