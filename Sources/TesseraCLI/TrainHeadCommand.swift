import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMath
import TesseraRepository
import TesseraTraining

/// `tessera train head`: a linear classification head over a sentence encoder's embeddings (BERT, e.g.
/// all-MiniLM-L6-v2), trained on a classification task file; the encoder stays frozen.
struct TrainHeadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "head",
        abstract: "Train a classification head (weight [C, D], bias [C]) over a sentence encoder's embeddings.",
        discussion: """
        The task file is a classification task (docs/task-format.md): its labels
        name the classes, in order. Each text is embedded as `tessera eval` embeds
        it (mean pooling, L2 normalisation); the head is trained by full-batch AdamW
        on the mean cross-entropy from zero weights, so a run is the same to the bit
        every time. The output is the safetensors file a classification task's
        "head" names; its metadata records the encoder, the data file's SHA-256,
        every setting, the final loss and the training accuracy.
        Example:
          tessera train head minilm --task sst2-train.jsonl -o sst2_head.safetensors
          tessera eval minilm --task sst2 --head sst2_head.safetensors
        """
    )

    @Argument(help: "The sentence encoder: a Hugging Face folder or REV:folder (BERT).") var model: String
    @Option(name: .customLong("task"), help: "A classification task file (JSONL).") var task: String
    @Option(name: [.customShort("o"), .long], help: "The output head (.safetensors).") var output: String
    @Option(help: "Optimizer steps (each over every example).") var steps: Int = 100
    @Option(help: "AdamW's learning rate.") var lr: Double = 0.05
    @Option(help: "AdamW's decoupled weight decay.") var weightDecay: Double = 0
    @Option(help: "Threads for matrix products (default: $OPENBLAS_NUM_THREADS, else the number of cores).") var threads: Int = Linalg.defaultThreads
    @Flag(help: "Replace an existing output file.") var force = false
    @Flag(help: "Print a JSON summary on stdout.") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func validate() throws {
        guard steps > 0 else { throw ValidationError("--steps must be positive") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number") }
        guard weightDecay >= 0, weightDecay.isFinite else { throw ValidationError("--weight-decay must be zero or positive") }
    }

    func run() throws {
        Linalg.setThreads(threads)
        try ClassificationHeadFiles.checkOutput(output, force: force)
        let input = try ClassificationHeadFiles.embed(task: task, model: model, directory: directory, command: "train head")
        input.resolver.finish()
        let taskFile = input.task, embeddings = input.embeddings, labels = input.labels
        let settings = LinearHeadTraining.Settings(steps: steps, learningRate: lr, adamW: AdamWSettings(weightDecay: weightDecay))
        let training = ProgressReporter(label: "tessera: training the head", total: steps)
        let result = try LinearHeadTraining.train(embeddings: embeddings, labels: labels, classes: taskFile.labelNames.count,
                                                  settings: settings, onStep: { step, _ in training.update(completed: step) })
        training.finish()

        let provenance = JSONValue.object([
            ("format", .string("tessera-train-head-v1")), ("tessera_version", .string(TesseraVersion.string)),
            ("model", .string(model)), ("task", .object([("path", .string(task)), ("sha256", .string(try TrainLoraCommand.sha256(file: task)))])),
            ("labels", .array(taskFile.labelNames.map { .string($0) })), ("examples", .int(labels.count)),
            ("steps", .int(steps)), ("lr", .double(lr)), ("weight_decay", .double(weightDecay)),
            ("final_loss", .double(result.losses.last ?? .nan)), ("training_accuracy", .double(result.trainingAccuracy)),
        ])
        let classes = taskFile.labelNames.count, dim = result.weight.count / classes
        try ClassificationHeadFiles.write(output, weight: result.weight, bias: result.bias, classes: classes, key: "tessera_training",
                                          provenance: provenance)
        if json {
            print(JSONValue.object([
                ("output", .string(output)), ("examples", .int(labels.count)), ("classes", .int(classes)),
                ("final_loss", .double(result.losses.last ?? .nan)), ("training_accuracy", .double(result.trainingAccuracy)),
            ]).serialized())
        } else {
            print(String(format: "trained a head [%d, %d] on %d examples: loss %.4f, training accuracy %.4f -> ",
                         classes, dim, labels.count, result.losses.last ?? .nan, result.trainingAccuracy) + output)
        }
    }
}
