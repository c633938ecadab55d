import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraRepository

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
        let repository = try Repository(directory: ".")
        let old = try CheckpointVersion.open(path: arguments[1], store: repository.store, label: "a/\(path)")
        let new = try CheckpointVersion.open(path: arguments[4], store: repository.store, label: "b/\(path)")
        print("diff --tessera a/\(path) b/\(path)")
        if old == nil && new == nil {
            print("  (not checkpoints: contents differ)")
            return
        }
        let diff = try ManifestDiff(old: old, new: new, numericSummaries: true)
        for c in diff.changes where c.kind != .unchanged { print("  " + Self.line(c)) }
        let renamed = diff.count(.renamed) > 0 ? ", \(diff.count(.renamed)) renamed" : ""
        print("  \(diff.count(.changed)) changed, \(diff.count(.added)) added, \(diff.count(.removed)) removed\(renamed), \(diff.count(.unchanged)) unchanged")
    }

    /// "changed   NAME  F32 [64,64]  L2(delta)=... rel=... max|delta|=...".
    static func line(_ c: ManifestDiff.Change) -> String {
        func shape(_ s: [Int]) -> String { "[" + s.map(String.init).joined(separator: ",") + "]" }
        var s = "\(c.kind.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) \(c.oldName.map { "\($0) -> " } ?? "")\(c.name)  \(c.dtype.rawValue) \(shape(c.shape))"
        if let oldShape = c.oldShape { s += "  (was \(shape(oldShape)))" }
        if let oldDType = c.oldDType { s += "  (was \(oldDType.rawValue))" }
        if let n = c.numeric {
            s += String(format: "  L2(delta)=%.4g", n.l2)
            if let relative = n.relative { s += String(format: "  rel=%.4g", relative) }
            s += String(format: "  max|delta|=%.4g", n.maxAbs)
        }
        return s
    }
}
