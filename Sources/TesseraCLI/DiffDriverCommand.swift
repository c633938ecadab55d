import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraMerge
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
        if AdapterVersions.isAdapterFile(path), let lines = adapterReport(path: path, repository: repository) {
            print("diff --tessera a/\(path) b/\(path)  (PEFT adapter)")
            for l in lines { print("  " + l) }
            return
        }
        if (path as NSString).lastPathComponent == AdapterVersions.configName {
            // The weights of a version could not be identified for sure: the config's changes, without ΔW.
            let read = { (f: String) in f == "/dev/null" ? Array("{}".utf8) : ((try? FileSystem.readFile(f, limit: 16 << 20)) ?? []) }
            if let lines = AdapterDiff.configLines(old: read(arguments[1]), new: read(arguments[4])) {
                print("diff --tessera a/\(path) b/\(path)  (PEFT adapter config; ΔW per module: see the weights' diff)")
                for l in lines { print("  " + l) }
                return
            }
        }
        let oldFormat = try FormatDiffSide.open(arguments[1], label: "a/\(path)", repository: repository)
        let newFormat = try FormatDiffSide.open(arguments[4], label: "b/\(path)", repository: repository)
        if oldFormat != nil || newFormat != nil {
            print("diff --tessera a/\(path) b/\(path)")
            for l in FormatDiffSide.metadataLines(old: oldFormat?.metadata ?? [], new: newFormat?.metadata ?? []) { print("  " + l) }
            // The other version may be a safetensors file (a path whose format changed).
            let old = try oldFormat?.side ?? CheckpointVersion.open(path: arguments[1], store: repository.store, label: "a/\(path)")
            let new = try newFormat?.side ?? CheckpointVersion.open(path: arguments[4], store: repository.store, label: "b/\(path)")
            try printTensorChanges(ManifestDiff(old: old, new: new, numericSummaries: true))
            return
        }
        let old = try CheckpointVersion.open(path: arguments[1], store: repository.store, label: "a/\(path)")
        let new = try CheckpointVersion.open(path: arguments[4], store: repository.store, label: "b/\(path)")
        print("diff --tessera a/\(path) b/\(path)")
        if old == nil && new == nil {
            print("  (not checkpoints: contents differ)")
            return
        }
        try printTensorChanges(ManifestDiff(old: old, new: new, numericSummaries: true))
    }

    func printTensorChanges(_ diff: ManifestDiff) {
        for c in diff.changes where c.kind != .unchanged { print("  " + Self.line(c)) }
        let renamed = diff.count(.renamed) > 0 ? ", \(diff.count(.renamed)) renamed" : ""
        print("  \(diff.count(.changed)) changed, \(diff.count(.added)) added, \(diff.count(.removed)) removed\(renamed), \(diff.count(.unchanged)) unchanged")
    }

    /// An adapter file's diff on ΔW, with the other file of the same folder found for each version; nil when a
    /// version's other file cannot be found for sure (the plain diff is shown then).
    func adapterReport(path: String, repository: Repository) -> [String]? {
        let versions = AdapterVersions(repository: repository)
        let isWeights = (path as NSString).lastPathComponent == AdapterVersions.weightsName
        func version(_ file: String, _ hex: String, label: String) throws -> AdapterFolder?? {
            if file == "/dev/null" { return .some(nil) }
            var sibling = try versions.sibling(of: path, oid: hex)
            if sibling == nil, let top = try? repository.worktree, Self.sameFile(file, top + "/" + path) {
                sibling = try versions.sibling(of: path, oid: nil)  // the worktree's own version
            }
            guard let sibling else { return nil }
            let folder = isWeights
                ? try versions.open(weights: .file(file), config: try versions.bytes(sibling), label: label)
                : try versions.open(weights: sibling, config: try FileSystem.readFile(file, limit: 16 << 20), label: label)
            return .some(folder)
        }
        do {
            guard let old = try version(arguments[1], arguments[2], label: "a/\(path)"),
                  let new = try version(arguments[4], arguments[5], label: "b/\(path)") else { return nil }
            return try AdapterDiff(old: old, new: new).lines()
        } catch {
            printError("tessera: \(path): the adapter's ΔW diff is not shown (\(error)); the plain diff follows")
            return nil
        }
    }

    /// Whether two paths name the same file, or files with the same bytes.
    static func sameFile(_ a: String, _ b: String) -> Bool {
        if URL(fileURLWithPath: a).resolvingSymlinksInPath().path == URL(fileURLWithPath: b).resolvingSymlinksInPath().path { return true }
        guard let x = try? FileSystem.readFile(a, limit: 64 << 20), let y = try? FileSystem.readFile(b, limit: 64 << 20) else { return false }
        return x == y
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
