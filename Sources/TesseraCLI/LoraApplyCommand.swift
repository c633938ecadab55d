import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraRepository

/// `tessera lora apply BASE ADAPTER -o OUT`: PEFT's `merge_and_unload`, written as a checkpoint.
struct LoraApplyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Write BASE with ADAPTER merged into it (PEFT's merge_and_unload), in the base's dtype.",
        discussion: """
        Each adapted weight becomes W + s·B·A, computed as PEFT computes it (ΔW in
        float32, added to the weight, rounded once to its dtype); modules the
        adapter saves whole (modules_to_save) replace the base's. The same as a merge
        config's `model: BASE+ADAPTER`.
        Example:
          tessera lora apply models/base adapters/math -o math-merged/
        """
    )

    @Argument(help: "The base model (file, folder, REV:path, REV:folder).") var base: String
    @Argument(help: "The PEFT adapter folder (or REV:folder).") var adapter: String
    @OptionGroup var outputOptions: CheckpointOutputOptions
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func run() throws {
        MemoryTuning.reuseLargeBuffers()
        let target = try outputOptions.target()
        _ = try outputOptions.shardSize()
        let resolver = CheckpointResolver(directory: directory)
        defer { resolver.finish() }
        let bc = try resolver.checkpoint(base)
        guard bc.layout != .adapter else {
            throw TesseraError(.invalidParameter, "\(base) is an adapter, not a model", hint: "tessera lora apply BASE ADAPTER -o OUT: the model first")
        }
        let folder = try resolver.checkpoint(adapter).adapterFolder()
        let applied = try LoRAAppliedSource(base: bc.source, adapter: folder.tensors, adapterConfig: folder.configBytes, name: "\(base)+\(adapter)")
        let writer = try OutputCheckpoint(options: outputOptions, target: target, reference: bc, dtype: nil,
                                          headerReserve: TaskVectorCommand.headerReserve(bc.source, inputs: 1))
        for name in applied.tensorNames { try writer.append(name, try applied.rawTensor(name)) }
        let card = ModelCard(title: "", baseModels: OutputCheckpoint.hubIDs([bc]), libraryName: "transformers",
                             summary: "made by `tessera lora apply`: the LoRA adapter `\(adapter)` merged into `\(base)` (PEFT's merge_and_unload)",
                             inputs: [("base", base), ("adapter", adapter)], parameters: nil,
                             configYAML: YAMLText.block(.object([("operation", .string("lora apply")), ("base", .string(base)), ("adapter", .string(adapter))])),
                             configHeading: "Operation")
        let written = try writer.finish(metadata: [("tessera.merge.format", "1"), ("tessera.merge.method", "lora-apply"),
                                                   ("tessera.lora.base", base), ("tessera.lora.adapter", adapter)], card: card)
        print("wrote \(base) + \(adapter) (\(folder.adapter.modules.count) modules adapted, \(folder.adapter.replacements.count) replaced): \(applied.tensorNames.count) tensors to \(writer.describe(written))")
    }
}
