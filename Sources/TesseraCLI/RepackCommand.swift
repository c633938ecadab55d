import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraRepository

struct RepackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repack",
        abstract: "Re-base delta chains: store the staged version of each checkpoint's tensors whole.",
        discussion: """
        Each tensor of the staged (index) version of every tracked checkpoint whose
        delta chain is deeper than --max-depth is stored again whole, and the
        manifest naming the new objects is staged: commit it to record it. Checkouts
        of that version then decode no chain, and the next fine-tunes start new
        chains from it. History is never rewritten: objects that committed manifests
        name (their Git LFS oids) stay as they are.
        Examples:
          tessera repack
          git commit -m "repack" model.safetensors
          tessera repack --max-depth 4 model.safetensors
          tessera repack --dry-run
        """
    )

    @OptionGroup var options: RepositoryOptions

    @Option(help: "Keep deltas up to this chain depth (0: store every delta whole).")
    var maxDepth: Int = 0

    @Flag(help: "Only report what would be stored again.")
    var dryRun = false

    @Argument(help: "Checkpoint files (default: every tracked checkpoint in the index).")
    var paths: [String] = []

    func run() throws {
        guard maxDepth >= 0 else { throw TesseraError(.usage, "--max-depth must be 0 or more", hint: "e.g. --max-depth 4") }
        let repository = try Repository(directory: options.directory)
        let relative = try paths.map { try repository.relativePath($0) }
        let result = try Repack(repository: repository, maximumDepth: maxDepth, paths: relative).run(dryRun: dryRun)
        if options.json {
            printJSON(.object([("files", .int(result.files)), ("rewritten", .int(result.rewritten)), ("bytes_written", .int(result.bytesWritten)),
                               ("deepest_before", .int(result.deepestBefore)), ("dry_run", .bool(dryRun))]))
        } else if result.rewritten == 0 {
            print("nothing to repack: no staged object is more than \(maxDepth) delta(s) deep (deepest: \(result.deepestBefore))")
        } else {
            print("\(dryRun ? "would store" : "stored") \(result.rewritten) object(s) whole in \(result.files) file(s)"
                  + (dryRun ? "" : " (\(humanBytes(result.bytesWritten))); commit the staged manifest(s) to record it"))
        }
    }
}
