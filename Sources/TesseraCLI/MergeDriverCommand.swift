import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraRepository

/// git's merge driver for tracked files (merge.tessera.driver = "tessera merge-driver %O %A %B %P"): git hands it
/// the three manifests (merge base, ours, theirs) and takes the merged manifest from %A.
struct MergeDriverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge-driver",
        abstract: "Tensor-wise three-way merge of a checkpoint (run by git merge, rebase, cherry-pick).",
        shouldDisplay: false
    )

    @Argument var base: String
    @Argument var ours: String
    @Argument var theirs: String
    @Argument var path: String

    func run() throws {
        // The driver merges tensor after tensor as `tessera merge` does: freed buffers stay in the heap for the next.
        MemoryTuning.reuseLargeBuffers()
        if (path as NSString).lastPathComponent == AdapterVersions.weightsName {
            // A PEFT adapter merges on ΔW (never factor by factor); it always stops for the config to be added.
            do {
                let outcome = try AdapterGitMerge(repository: try Repository(directory: ".")).merge(base: base, ours: ours, theirs: theirs, path: path)
                printError("tessera: \(path): adapters merged on ΔW (ours + theirs − base, exact): rank \(outcome.rank), \(outcome.modules) modules; \(outcome.configPath) was rewritten for the new rank: check it, then `git add` both files and commit")
            } catch let e as TesseraError {
                printError("tessera: \(e.description)")
            }
            throw ExitCode.failure
        }
        let driver = GitMergeDriver(repository: try Repository(directory: "."))
        do {
            let outcome = try driver.merge(base: base, ours: ours, theirs: theirs, path: path)
            let methods = Dictionary(grouping: outcome.merged, by: \.method).map { "\($0.value.count) by \($0.key)" }.sorted()
            if outcome.conflicts.isEmpty {
                if !methods.isEmpty { printError("tessera: \(path): merged \(methods.joined(separator: ", "))") }
                return
            }
            let names = outcome.conflicts.prefix(5).joined(separator: ", ") + (outcome.conflicts.count > 5 ? ", ..." : "")
            printError("tessera: \(path): \(outcome.conflicts.count) tensor(s) changed on both branches need a merge method (\(names)); the three versions are in \(path).base/.ours/.theirs and \(path).conflict lists them; finish with `tessera resolve \(path) --method linear` (or configure \(MergeRules.file))")
        } catch let e as TesseraError {
            // git takes any failure of the driver for a conflict; usage errors too exit 1 here.
            printError("tessera: \(e.description)")
        }
        throw ExitCode.failure
    }
}
