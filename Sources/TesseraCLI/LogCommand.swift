import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore

struct LogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log",
        abstract: "List the commits where a tracked file's tensors changed (or one tensor, with --tensor).",
        discussion: """
        Compares each commit's manifest with its first parent's, by exact SHA-256 of each tensor's bytes.
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
        func tensors(_ rev: String) -> [String: String]? {
            guard let bytes = try? context.repository.blob("\(rev):\(relative)"), Manifest.looksLikeManifest(bytes),
                  let m = try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: relative) else { return nil }
            return Dictionary(m.tensors.map { ($0.name, $0.stored.rawSHA256) }, uniquingKeysWith: { a, _ in a })
        }
        for line in r.stdoutText.split(separator: "\n") {
            let f = line.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
            guard f.count == 4 else { continue }
            let (commit, parents, date, subject) = (f[0], f[1].split(separator: " ").map(String.init), f[2], f[3])
            let now = tensors(commit) ?? [:]
            let before = parents.first.flatMap { tensors($0) } ?? [:]
            var changed: [String] = [], added: [String] = [], removed: [String] = []
            for (name, h) in now {
                if let b = before[name] { if b != h { changed.append(name) } } else { added.append(name) }
            }
            for name in before.keys where now[name] == nil { removed.append(name) }
            if let tensor {
                guard changed.contains(tensor) || added.contains(tensor) || removed.contains(tensor) else { continue }
                changed = changed.filter { $0 == tensor }; added = added.filter { $0 == tensor }; removed = removed.filter { $0 == tensor }
            }
            if changed.isEmpty && added.isEmpty && removed.isEmpty { continue }
            if options.json {
                entries.append(.object([("commit", .string(commit)), ("date", .string(date)), ("subject", .string(subject)),
                                        ("changed", .array(changed.sorted().map { .string($0) })), ("added", .array(added.sorted().map { .string($0) })),
                                        ("removed", .array(removed.sorted().map { .string($0) }))]))
            } else {
                print("\(commit.prefix(10)) \(date) \(subject)")
                var parts: [String] = []
                if !changed.isEmpty { parts.append("\(changed.count) changed") }
                if !added.isEmpty { parts.append("\(added.count) added") }
                if !removed.isEmpty { parts.append("\(removed.count) removed") }
                print("    " + parts.joined(separator: ", ") + ((changed + added + removed).count <= 8 ? ": " + (changed.sorted().map { "~\($0)" } + added.sorted().map { "+\($0)" } + removed.sorted().map { "-\($0)" }).joined(separator: " ") : ""))
            }
        }
        if options.json { printJSON(.array(entries)) }
    }
}
