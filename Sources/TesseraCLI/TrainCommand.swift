import ArgumentParser

/// `tessera train lora`: fine-tuning on Tessera's own engine.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train LoRA adapters, PhatGOOSE gates and classification heads with the embedded CPU engine.",
        discussion: """
        The data are `tessera eval` task files (docs/task-format.md). The output
        is a PEFT adapter folder with its provenance (training.json), ready to
        commit, evaluate (`tessera eval BASE --adapter DIR`) and merge.
        Example:
          tessera train lora smollm2 --task arc-train.jsonl --steps 200 -o arc-lora
        """,
        subcommands: [TrainLoraCommand.self, TrainHeadCommand.self, TrainGatesCommand.self]
    )
}
