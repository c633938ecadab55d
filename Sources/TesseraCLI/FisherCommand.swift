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
        try ClassificationHeadFiles.checkOutput(output, force: force)
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
