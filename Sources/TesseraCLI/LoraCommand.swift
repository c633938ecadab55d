import ArgumentParser

/// `tessera lora apply|extract`: LoRA adapters to and from whole models.
struct LoraCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora",
        abstract: "Apply a PEFT LoRA adapter to its base model, or extract one from a fine-tune.",
        discussion: """
        Adapters are PEFT folders (adapter_config.json + adapter_model.safetensors),
        on disk or at a revision (REV:folder). `tessera ls ADAPTER` shows one;
        `tessera merge` combines several on ΔW (see docs/commands.md).
        Examples:
          tessera lora apply models/base adapters/math -o math-merged/
          tessera lora extract models/base models/finetuned --rank 16 -o adapters/ft
        """,
        subcommands: [LoraApplyCommand.self, LoraExtractCommand.self]
    )
}
