import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore
import TesseraIO

struct LogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log",
        abstract: "List the commits where a tracked file's tensors changed (or one tensor, with --tensor).",
        discussion: """
        Compares each commit's manifest with its first parent's, by exact SHA-256 of
        each tensor's bytes.
        Examples:
          tessera log model.safetensors
          tessera log model.safetensors --tensor h.0.attn.c_attn.weight
          tessera log model.safetensors --json
        """
    )

    @Argument(help: "Path of a tracked file.")
    var path: String

    @Option(help: "Only commits where this tensor changed (added, removed or new values).")
    var tensor: String?

    @Option(help: "Start from this revision.")
    var revision: String = "HEAD"

    @OptionGroup var options: RepositoryOptions

    func run() throws {
        let context = try RepositoryContext(directory: options.directory)
        let relative = (try? context.relativePath(path)) ?? path
        let r = try Subprocess.check(["git", "log", "--format=%H%x09%P%x09%ad%x09%s", "--date=short", revision, "--", relative],
                                     directory: context.repository.workdir ?? context.repository.gitDirectory, what: "git log failed")
        var entries: [JSONValue] = []
        func tensors(_ rev: String) -> [(name: String, hash: String)]? {
            guard let bytes = try? context.repository.blob("\(rev):\(relative)"), Manifest.looksLikeManifest(bytes),
                  let m = try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: relative) else { return nil }
            return m.tensors.map { ($0.name, "\($0.dtype.rawValue)\($0.shape)\($0.stored.rawSHA256)") }
        }
        var seenTensor = false
        for line in r.stdoutText.split(separator: "\n") {
            let f = line.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
            guard f.count == 4 else { continue }
            let (commit, parents, date, subject) = (f[0], f[1].split(separator: " ").map(String.init), f[2], f[3])
            let nowList = tensors(commit) ?? []
            let beforeList = parents.first.flatMap { tensors($0) } ?? []
            // Names compared byte for byte (two canonically equivalent names are two tensors).
            let now = Dictionary(nowList.map { (ExactName($0.name), $0.hash) }, uniquingKeysWith: { a, _ in a })
            let before = Dictionary(beforeList.map { (ExactName($0.name), $0.hash) }, uniquingKeysWith: { a, _ in a })
            if let tensor, now[ExactName(tensor)] != nil || before[ExactName(tensor)] != nil { seenTensor = true }
            var changed: [String] = [], added: [String] = [], removed: [String] = [], renamed: [(String, String)] = []
            for (name, h) in nowList {
                if let b = before[ExactName(name)] { if b != h { changed.append(name) } } else { added.append(name) }
            }
            for (name, _) in beforeList where now[ExactName(name)] == nil { removed.append(name) }
            // The same bytes under a new name: a rename, not a removal and an addition.
            var removedByValue: [String: [String]] = [:]
            for name in removed { removedByValue[before[ExactName(name)]!, default: []].append(name) }
            added = added.filter { name in
                let h = now[ExactName(name)]!
                guard var olds = removedByValue[h], !olds.isEmpty else { return true }
                renamed.append((olds.removeFirst(), name))
                removedByValue[h] = olds
                return false
            }
            let renamedFrom = Set(renamed.map { ExactName($0.0) })
            removed = removed.filter { !renamedFrom.contains(ExactName($0)) }
            if let tensor {
                let t = ExactName(tensor)
                guard changed.contains(where: { ExactName($0) == t }) || added.contains(where: { ExactName($0) == t })
                      || removed.contains(where: { ExactName($0) == t }) || renamed.contains(where: { ExactName($0.0) == t || ExactName($0.1) == t }) else { continue }
                changed = changed.filter { ExactName($0) == t }; added = added.filter { ExactName($0) == t }; removed = removed.filter { ExactName($0) == t }
                renamed = renamed.filter { ExactName($0.0) == t || ExactName($0.1) == t }
            }
            if changed.isEmpty && added.isEmpty && removed.isEmpty && renamed.isEmpty { continue }
            if options.json {
                entries.append(.object([("commit", .string(commit)), ("date", .string(date)), ("subject", .string(subject)),
                                        ("changed", .array(changed.sorted().map { .string($0) })), ("added", .array(added.sorted().map { .string($0) })),
                                        ("removed", .array(removed.sorted().map { .string($0) })),
                                        ("renamed", .array(renamed.map { .object([("from", .string($0.0)), ("to", .string($0.1))]) }))]))
            } else {
                print("\(commit.prefix(10)) \(date) \(subject)")
                var parts: [String] = []
                if !changed.isEmpty { parts.append("\(changed.count) changed") }
                if !added.isEmpty { parts.append("\(added.count) added") }
                if !removed.isEmpty { parts.append("\(removed.count) removed") }
                if !renamed.isEmpty { parts.append("\(renamed.count) renamed") }
                let names = changed.sorted().map { "~\($0)" } + added.sorted().map { "+\($0)" } + removed.sorted().map { "-\($0)" }
                    + renamed.map { "\($0.0)->\($0.1)" }
                print("    " + parts.joined(separator: ", ") + (names.count <= 8 ? ": " + names.joined(separator: " ") : ""))
            }
        }
        if let tensor, !seenTensor {
            throw TesseraError(.notFound, "\(relative) has no tensor named '\(tensor)' in any version from \(revision)",
                               hint: "`tessera ls \(revision):\(relative)` lists its tensors")
        }
        if options.json { printJSON(.array(entries)) }
    }
}
