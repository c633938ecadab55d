import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraRepository

/// `tessera lora extract BASE FINETUNED --rank r -o DIR`: mergekit's `mergekit-extract-lora`.
struct LoraExtractCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Write the best rank-r LoRA adapter of a fine-tune as a PEFT folder (mergekit-extract-lora).",
        discussion: """
        For every linear weight, the truncated SVD of (finetuned − base): A = √Σ·Vᵀ,
        B = U·√Σ, lora_alpha = r (scaling 1); embeddings, the output head and norms
        are saved whole (modules_to_save), as mergekit 0.1.5 does by default.
        Example:
          tessera lora extract models/base models/finetuned --rank 16 -o adapters/ft
        """
    )

    @Argument(help: "The base model (file, folder, REV:path, REV:folder).") var base: String
    @Argument(help: "The fine-tuned model.") var finetuned: String
    @Option(help: "The largest rank of a module (mergekit's --max-rank).") var rank: Int
    @Option(name: [.customShort("o"), .long], help: ArgumentHelp("The adapter folder to write.", valueName: "dir")) var output: String
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func run() throws {
        let target = try CheckpointOutputTarget.resolve(output.hasSuffix("/") || output.hasSuffix(".safetensors") ? output : output + "/")
        guard case .folder = target else {
            throw TesseraError(.usage, "-o \(output): an adapter is a folder (adapter_config.json + adapter_model.safetensors)", hint: "name a folder")
        }
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        defer { resolver.finish() }
        let bc = try resolver.checkpoint(base), fc = try resolver.checkpoint(finetuned)
        let extracted = try LoRAExtraction.extract(base: bc.source, finetuned: fc.source, maxRank: rank, baseName: base)
        let writer = try CheckpointOutputWriter(target: target, headerReserve: TaskVectorCommand.headerReserve(fc.source, inputs: 1), weightsName: "adapter_model")
        try extracted.write { try writer.append($0, $1) }
        let card = ModelCard(title: URL(fileURLWithPath: target.path).standardizedFileURL.lastPathComponent, baseModels: OutputCheckpoint.hubIDs([bc]),
                             libraryName: "peft",
                             summary: "made by `tessera lora extract`: the rank-\(rank) LoRA of `\(finetuned)` − `\(base)` (mergekit-extract-lora's semantics)",
                             inputs: [("base", base), ("fine-tuned", finetuned)], parameters: nil,
                             configYAML: YAMLText.block(.object([("operation", .string("lora extract")), ("base", .string(base)),
                                                                 ("finetuned", .string(finetuned)), ("rank", .int(rank))])),
                             configHeading: "Operation")
        let written = try writer.finish(metadata: [("format", "pt")], sideFiles: [(CheckpointFolderLayout.adapterConfigName, extracted.configBytes)]) { card.render(files: $0) }
        let modules = extracted.tensors.count / 2
        print("wrote a rank-\(extracted.rank) adapter of \(finetuned) − \(base): \(modules) modules decomposed, \(extracted.wholeTensors.count) tensors saved whole, to \(target.path) (\(written.files.joined(separator: ", ")))")
    }
}
