import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraIO

/// git's external diff driver for tracked files (diff.tessera.command): git calls it with
/// `path old-file old-hex old-mode new-file new-hex new-mode`.
struct DiffDriverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff-driver",
        abstract: "Per-tensor diff of two versions of a checkpoint (run by `git diff`; see `tessera install`).",
        discussion: "Also usable directly:\n  tessera diff-driver model.safetensors old.safetensors - - \\\n        new.safetensors - -",
        shouldDisplay: false
    )

    @Argument var arguments: [String]

    func run() throws {
        guard arguments.count >= 7 else {
            throw TesseraError(.usage, "diff-driver takes git's 7 external-diff arguments", hint: "it is run by `git diff`")
        }
        let path = arguments[0]
        let context = try RepositoryContext(directory: ".")
        let old = try ComparableCheckpoint.open(path: arguments[1], store: context.store, label: "a/\(path)")
        let new = try ComparableCheckpoint.open(path: arguments[4], store: context.store, label: "b/\(path)")
        print("diff --tessera a/\(path) b/\(path)")
        if old == nil && new == nil {
            print("  (not checkpoints: contents differ)")
            return
        }
        let changes = try TensorChange.compare(old: old, new: new)
        var counts: [TensorChange.Kind: Int] = [:]
        for c in changes {
            counts[c.kind, default: 0] += 1
            if c.kind != .unchanged { print("  " + c.line) }
        }
        let renamed = counts[.renamed].map { ", \($0) renamed" } ?? ""
        print("  \(counts[.changed] ?? 0) changed, \(counts[.added] ?? 0) added, \(counts[.removed] ?? 0) removed\(renamed), \(counts[.unchanged] ?? 0) unchanged")
    }
}
