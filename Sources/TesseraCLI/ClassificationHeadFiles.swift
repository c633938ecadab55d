import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraRepository

/// What `train head` and `fisher` share: a classification task file read and checked, its texts embedded by a
/// sentence encoder as `tessera eval` embeds them, and a head-shaped output (`weight` [C, D], `bias` [C], float32,
/// provenance in the metadata) written atomically, never over an existing file unless forced.
enum ClassificationHeadFiles {
    struct EmbeddedTask {
        var task: UserTask
        var labels: [Int]
        var embeddings: [[Float]]
        /// The resolver that opened the encoder (it also opens a head named by path or REV:path).
        var resolver: CheckpointResolver
    }

    /// Refuses an existing output before anything is read or computed.
    static func checkOutput(_ output: String, force: Bool) throws {
        if FileManager.default.fileExists(atPath: output) && !force {
            throw TesseraError(.conflict, "\(output) exists; nothing was written", hint: "choose another output (-o), or add --force to replace it")
        }
    }

    /// Reads the task (a classification task, else one line naming `command`), loads the encoder and embeds every
    /// text. The caller must call `resolver.finish()`.
    static func embed(task path: String, model: String, directory: String, command: String) throws -> EmbeddedTask {
        let task = try UserTask(path: path)
        guard case let .classification(texts, labels) = task.examples else {
            throw TesseraError(.usage, "\(path) is a \(task.kind.rawValue) task; `tessera \(command)` reads a classification task",
                               hint: "see docs/task-format.md, \"classification\"")
        }
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        guard case let .embedder(embedder) = try ResolvedModel.resolve(model, resolver: resolver).kind else {
            resolver.finish()
            throw TesseraError(.unsupported, "\(model) is a causal language model; `tessera \(command)` works on a sentence encoder (BERT)",
                               hint: "name a BERT model (e.g. all-MiniLM-L6-v2); a causal model is trained with `tessera train lora`")
        }
        let bar = ProgressReporter(label: "tessera: embedding \(texts.count) examples", total: texts.count)
        let embeddings = try embedder.embed(texts, progress: { bar.update(completed: $0) })
        bar.finish()
        return EmbeddedTask(task: task, labels: labels, embeddings: embeddings, resolver: resolver)
    }

    /// Writes `weight` [classes, weight.count / classes] and `bias` [classes] with `provenance` under `key` in the
    /// metadata, atomically (a temporary file beside it, then a rename).
    static func write(_ output: String, weight: [Float], bias: [Float], classes: Int, key: String, provenance: JSONValue) throws {
        let entries = SafetensorsHeader.contiguous([("weight", DType.f32, [classes, weight.count / max(1, classes)]), ("bias", DType.f32, [classes])])
        guard var bytes = SafetensorsHeader.encode(entries, metadata: [(key, provenance.serialized())]) else {
            throw TesseraError(.io, "internal error: the header of \(output) could not be encoded")
        }
        for values in [weight, bias] { values.withUnsafeBytes { bytes += Array($0) } }
        let parent = (output as NSString).deletingLastPathComponent
        try FileSystem.writeAtomically(bytes, to: output, tmpDir: parent.isEmpty ? "." : parent)
    }
}
