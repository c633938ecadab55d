import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraRepository

struct ResolveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolve",
        abstract: "Finish a conflicted merge of a checkpoint with a chosen merge method, and stage the result.",
        discussion: """
        Reads the three versions git keeps for the conflicted file (merge base, ours,
        theirs), merges every tensor changed on both sides with the method (the merge
        base as the base model), writes the file, `git add`s it and removes the
        .base/.ours/.theirs/.conflict files. Then `git commit` as usual.
        Examples:
          tessera resolve model.safetensors --method linear
          tessera resolve model.safetensors --method ties --param density=0.5
          tessera resolve model.safetensors --method theirs
        """
    )

    @Argument(help: "The conflicted file.")
    var path: String

    @Option(help: "The merge method for the tensors changed on both sides.")
    var method: String

    @Option(help: "Weights of ours and theirs, comma-separated (default 1,1).")
    var weights: String?

    @OptionGroup var parameterOptions: MergeParameterOptions

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let conflicted = try ConflictedCheckpoint(path: path, repository: try Repository(directory: directory))
        _ = try MergeRegistry.method(named: method)
        var rule = MergeRules.Rule(method: method)
        rule.weights = try MergeCommand.list(weights, count: 2, name: "--weights")
        rule.parameters = try parameterOptions.parsed()
        let merged = try conflicted.resolve(with: rule)
        print("resolved \(conflicted.path): \(merged.count) tensor(s) merged by \(method); staged. Commit to conclude the merge.")
    }
}
