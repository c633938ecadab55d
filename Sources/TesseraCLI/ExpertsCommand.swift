import ArgumentParser

/// `tessera experts list|show|add|remove|cluster|merge`: libraries of LoRA experts, versioned with their base.
struct ExpertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "experts",
        abstract: "Manage a library of LoRA experts: list, show, add, remove, cluster, merge.",
        discussion: """
        A library is a folder in the repository: library.json (the base model,
        each expert's tasks, content hash and source) and one PEFT adapter
        folder per expert. Commit it with the base; `tessera route build`
        makes a router over it and `tessera eval` runs the routed model.
        Examples:
          tessera experts add experts adapters/sst2 --base smollm2 --task sst2
          tessera experts list experts
          tessera experts show HEAD~1:experts sst2
          tessera experts cluster experts --k 3 --sparsity 0.5
        """,
        subcommands: [ExpertsListCommand.self, ExpertsShowCommand.self, ExpertsAddCommand.self, ExpertsRemoveCommand.self,
                      ExpertsClusterCommand.self, ExpertsMergeCommand.self]
    )
}
