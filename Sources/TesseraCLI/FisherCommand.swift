import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMath
import TesseraRepository
import TesseraTraining

/// `tessera fisher`: the diagonal Fisher information of a model on a task, written in the layout
/// `tessera merge --method fisher` reads (the same tensor names as the parameters). Two forms: a causal language
/// model (Llama, GPT-2, GPT-Neo: every weight tensor, `LanguageModelFisher`), or a sentence encoder's classification
/// head.
struct FisherCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fisher",
        abstract: "Compute the diagonal Fisher information of a model (or a classification head) on a task, for Fisher merging.",
        discussion: """
        A causal language model (Llama, e.g. SmolLM2, GPT-2 or GPT-Neo; a folder, a
        safetensors file, REV:path or a Llama .gguf): the Fisher of every weight
        tensor, named and shaped as the Hugging Face checkpoint has it (GPT-2's Conv1D
        weights [in, out]; a GGUF: as `tessera import` writes it). Estimate by
        task kind (docs/task-format.md):
          multiple_choice, classification (label words): the exact expectation over
            the model's distribution restricted to the choices, F = mean over
            examples of sum_c p(c|x) (grad log p(c|x))^2, p(c|x) the softmax over
            choices of the summed continuation log-probability (labels unused);
          perplexity, generation: the empirical Fisher, F = mean over examples of
            (grad sum_t log p(x_t|x_<t))^2 over the example's own tokens (text:
            every token after the first; generation: the reference completion).
        The first --examples examples (default 100) are used.
        A sentence encoder (BERT) with a classification task: the Fisher of its
        head's `weight` and `bias` (the task's "head", or --head), the exact
        expectation over the head's predictive distribution.
        Models fine-tuned from one base merge with `tessera merge --method fisher`
        (a config's `parameters: {fisher: FILE}` per model). The output is replaced
        only with --force.
        Examples:
          tessera fisher smollm2 --task arc-easy-train.jsonl --examples 20 \\
              -o arc.fisher.safetensors
          tessera fisher minilm --task train.jsonl -o fisher.safetensors
        """
    )

    @Argument(help: "The model: a folder, a safetensors file, REV:path, or a .gguf (a causal LM); or a sentence encoder (BERT).") var model: String
    @Option(name: .customLong("task"), help: "A task file (JSONL, docs/task-format.md).") var task: String
    @Option(help: "The head of a sentence encoder (default: the one the task file names).") var head: String?
    @Option(name: [.customShort("o"), .long], help: "The output Fisher (.safetensors).") var output: String
    @Option(help: "Use the first N examples of the task (causal models).") var examples: Int = LanguageModelFisherDefaults.examples
    @Option(help: "Longest sequence in tokens (default: 512, or the model's window if shorter).") var maxLength: Int?
    @Option(help: "Threads for matrix products (default: $OPENBLAS_NUM_THREADS, else the number of cores).") var threads: Int = Linalg.defaultThreads
    @Flag(help: "Replace an existing output file.") var force = false
    @Flag(help: "Print a JSON summary on stdout (causal models).") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func validate() throws {
        if examples <= 0 { throw ValidationError("--examples must be positive") }
        if let m = maxLength, m < 2 { throw ValidationError("--max-length must be at least 2") }
        if threads <= 0 { throw ValidationError("--threads must be positive") }
        if output.isEmpty { throw ValidationError("-o names no file") }
    }

    func run() throws {
        Linalg.setThreads(threads)
        try ClassificationHeadFiles.checkOutput(output, force: force)
        let userTask = try UserTask(path: task)
        if userTask.kind == .classification {
            // A classification task goes to a sentence encoder's head or to a causal model's label words.
            let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
            let resolved = try ResolvedModel.resolve(model, resolver: resolver)
            guard case .causal = resolved.kind else {
                resolver.finish()
                return try runHead()
            }
            defer { resolver.finish() }
            return try runLanguageModel(resolved, task: userTask, resolver: resolver)
        }
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        defer { resolver.finish() }
        let resolved = try ResolvedModel.resolve(model, resolver: resolver)
        guard case .causal = resolved.kind else {
            throw TesseraError(.unsupported, "a \(userTask.kind.rawValue) task has no Fisher on a sentence encoder: \(model)'s Fisher is its classification head's",
                               hint: "give a classification task (with a head) for a sentence encoder, or a causal language model")
        }
        try runLanguageModel(resolved, task: userTask, resolver: resolver)
    }

    /// Every weight of a causal language model.
    func runLanguageModel(_ resolved: ResolvedModel, task userTask: UserTask, resolver: CheckpointResolver) throws {
        let started = DispatchTime.now().uptimeNanoseconds
        guard case let .causal(lm, tokenizer) = resolved.kind else { return }
        let trainable = try TrainableModels.make(lm)
        guard let gradientModel = trainable as? any WeightGradientModel else {
            throw TesseraError(.unsupported, "the Fisher of a language model's weights is computed for Llama, GPT-2 and GPT-Neo models, not \(type(of: lm))",
                               hint: "use a Llama, GPT-2 or GPT-Neo checkpoint")
        }
        let maxLength = self.maxLength ?? min(512, gradientModel.maxSequenceLength)
        guard maxLength <= gradientModel.maxSequenceLength else {
            throw TesseraError(.usage, "--max-length \(maxLength) is longer than the model's window (\(gradientModel.maxSequenceLength) tokens)",
                               hint: "give --max-length \(gradientModel.maxSequenceLength) or less")
        }
        let rendered = try LanguageModelFisher.examples(userTask, tokenizer: tokenizer, maxLength: maxLength, limit: examples)
        let fisher = LanguageModelFisher(model: gradientModel)
        let bar = ProgressReporter(label: "fisher", total: rendered.examples.count)
        let flat = try fisher.diagonal(rendered.examples, progress: { bar.update(completed: $0) })
        bar.finish()
        let tensors = fisher.tensors(flat)
        let tokens = rendered.examples.reduce(0) { $0 + $1.sequences.reduce(0) { $0 + $1.tokens.count } }
        let provenance = JSONValue.object([
            ("format", .string("tessera-fisher-v1")), ("tessera_version", .string(TesseraVersion.string)),
            ("method", .string("diagonal Fisher of every weight")),
            ("estimate", .string(rendered.estimate.rawValue)), ("estimate_description", .string(rendered.estimate.description)),
            ("model", .string(model)),
            ("task", .object([("path", .string(task)), ("sha256", .string(try TrainLoraCommand.sha256(file: task))),
                              ("name", .string(userTask.name)), ("kind", .string(userTask.kind.rawValue))])),
            ("examples", .int(rendered.examples.count)), ("examples_in_file", .int(rendered.inFile)),
            ("examples_dropped", .int(rendered.dropped)), ("examples_truncated", .int(rendered.truncated)),
            ("max_length", .int(maxLength)), ("tokens", .int(tokens)),
        ])
        let metadata: [(String, String)] = [
            ("format", "tessera-fisher-v1"), ("method", "diagonal_fisher"), ("estimate", rendered.estimate.rawValue),
            ("task", task), ("examples", String(rendered.examples.count)), ("tessera_fisher", provenance.serialized()),
        ]
        try Self.writeTensors(output, tensors: tensors, metadata: metadata)
        let wall = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        if json {
            print(JSONValue.object([
                ("output", .string(output)), ("estimate", .string(rendered.estimate.rawValue)), ("examples", .int(rendered.examples.count)),
                ("tokens", .int(tokens)), ("tensors", .int(tensors.count)), ("parameters", .int(flat.count)),
                ("wall_seconds", .double(wall)),
            ]).serialized())
        } else {
            print("Fisher of \(model) (\(tensors.count) tensors) over \(rendered.examples.count) examples, \(rendered.estimate.rawValue) -> \(output)"
                  + String(format: ", %.1f s", wall))
        }
    }

    /// Float32 tensors with `metadata`, streamed to a temporary file beside `path`, flushed, then renamed.
    static func writeTensors(_ path: String, tensors: [(name: String, shape: [Int], values: [Float])], metadata: [(String, String)]) throws {
        let entries = SafetensorsHeader.contiguous(tensors.map { ($0.name, DType.f32, $0.shape) })
        guard let header = SafetensorsHeader.encode(entries, metadata: metadata) else {
            throw TesseraError(.io, "internal error: the header of \(path) could not be encoded")
        }
        let parent = (path as NSString).deletingLastPathComponent
        let tmp = (parent.isEmpty ? "." : parent) + "/" + FileSystem.uniqueName()
        do {
            let file = try FileDescriptor.open(tmp, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
            try file.writeAll(header)
            for t in tensors { try t.values.withUnsafeBytes { try file.writeAll($0) } }
            try file.sync()
            try FileSystem.rename(tmp, path)
        } catch {
            FileSystem.remove(tmp)
            throw error
        }
    }

    /// A sentence encoder's classification head (the form from before causal models).
    func runHead() throws {
        let input = try ClassificationHeadFiles.embed(task: task, model: model, directory: directory, command: "fisher")
        let resolver = input.resolver
        defer { resolver.finish() }
        guard let headPath = head ?? input.task.headPath else {
            throw TesseraError(.usage, "no head: the task file names none", hint: "give --head FILE")
        }
        let embeddings = input.embeddings
        let headSource = try resolver.source(headPath)
        let classifier = try LinearClassificationHead(source: headSource)
        guard embeddings.first?.count == classifier.inputSize else {
            throw TesseraError(.shapeMismatch, "\(headPath) classifies \(classifier.inputSize)-value embeddings, \(model) makes \(embeddings.first?.count ?? 0)",
                               hint: "the head was trained for another encoder")
        }
        let fisher = try ClassifierFisher.diagonal(weight: classifier.weight, bias: classifier.bias, outputs: classifier.outputCount, inputs: embeddings)
        let provenance = JSONValue.object([
            ("format", .string("tessera-fisher-v1")), ("tessera_version", .string(TesseraVersion.string)),
            ("estimate", .string("exact expectation over the model's predictive distribution, mean over examples")),
            ("model", .string(model)), ("head", .string(headPath)),
            ("task", .object([("path", .string(task)), ("sha256", .string(try TrainLoraCommand.sha256(file: task)))])),
            ("examples", .int(embeddings.count)),
        ])
        try ClassificationHeadFiles.write(output, weight: fisher.weight, bias: fisher.bias, classes: classifier.outputCount,
                                          key: "tessera_fisher", provenance: provenance)
        print("Fisher of \(headPath) over \(embeddings.count) examples -> \(output)")
    }
}
