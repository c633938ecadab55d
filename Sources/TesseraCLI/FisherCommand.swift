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
/// `tessera merge --method fisher` reads (the same tensor names as the parameters).
struct FisherCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fisher",
        abstract: "Compute the diagonal Fisher information of a classification head on a task, for Fisher merging.",
        discussion: """
        A classification task (docs/task-format.md) on a sentence encoder (BERT,
        e.g. all-MiniLM-L6-v2): the Fisher of its head's `weight` and `bias` (the
        task's "head", or --head), F = mean over the task's texts of Σ_y p(y|x) · (∂
        log p(y|x)/∂θ)² — the exact expectation over the model's own predictive
        distribution, not the "empirical" Fisher at the labels (the labels are not
        used). The output names its tensors as the head does, so heads trained on
        different data merge with `tessera merge --method fisher` (a config's
        `parameters: {fisher: FILE}` per model).
        Example:
          tessera fisher minilm --task train.jsonl -o fisher.safetensors
        """
    )

    @Argument(help: "The sentence encoder: a Hugging Face folder or REV:folder (BERT).") var model: String
    @Option(name: .customLong("task"), help: "A classification task file (JSONL).") var task: String
    @Option(help: "The head (default: the one the task file names).") var head: String?
    @Option(name: [.customShort("o"), .long], help: "The output Fisher (.safetensors).") var output: String
    @Option(help: "Threads for matrix products (default: $OPENBLAS_NUM_THREADS, else the number of cores).") var threads: Int = Linalg.defaultThreads
    @Flag(help: "Replace an existing output file.") var force = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func run() throws {
        Linalg.setThreads(threads)
        if FileManager.default.fileExists(atPath: output) && !force {
            throw TesseraError(.conflict, "\(output) exists; nothing was written", hint: "choose another output (-o), or add --force to replace it")
        }
        let taskFile = try UserTask(path: task)
        guard case let .classification(texts, _) = taskFile.examples else {
            throw TesseraError(.unsupported, "\(task) is a \(taskFile.kind.rawValue) task; `tessera fisher` computes a classification head's Fisher",
                               hint: "give a classification task (docs/task-format.md)")
        }
        guard let headPath = head ?? taskFile.headPath else {
            throw TesseraError(.usage, "no head: the task file names none", hint: "give --head FILE")
        }
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        defer { resolver.finish() }
        guard case let .embedder(embedder) = try ResolvedModel.resolve(model, resolver: resolver).kind else {
            throw TesseraError(.unsupported, "\(model) is a causal language model; `tessera fisher` computes a sentence encoder's head's Fisher",
                               hint: "name a BERT model (e.g. all-MiniLM-L6-v2)")
        }
        let headSource = try resolver.source(headPath)
        let classifier = try LinearClassificationHead(source: headSource)
        let bar = ProgressReporter(label: "tessera: embedding \(texts.count) examples", total: texts.count)
        let embeddings = try embedder.embed(texts, progress: { bar.update(completed: $0) })
        bar.finish()
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
            ("examples", .int(texts.count)),
        ])
        let entries = SafetensorsHeader.contiguous([("weight", DType.f32, [classifier.outputCount, classifier.inputSize]), ("bias", DType.f32, [classifier.outputCount])])
        guard var bytes = SafetensorsHeader.encode(entries, metadata: [("tessera_fisher", provenance.serialized())]) else {
            throw TesseraError(.io, "internal error: the Fisher's header could not be encoded")
        }
        for values in [fisher.weight, fisher.bias] { values.withUnsafeBytes { bytes += Array($0) } }
        let parent = (output as NSString).deletingLastPathComponent
        try FileSystem.writeAtomically(bytes, to: output, tmpDir: parent.isEmpty ? "." : parent)
        print("Fisher of \(headPath) over \(texts.count) examples -> \(output)")
    }
}
