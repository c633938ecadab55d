import ArgumentParser
import Foundation
import TesseraCore
import TesseraRepository

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
        let repository = try Repository(directory: options.directory)
        let relative = (try? repository.relativePath(path)) ?? path
        let history = try TensorHistory(path: relative, from: revision, tensor: tensor, repository: repository)
        if options.json {
            printJSON(.array(history.entries.map { e in
                .object([("commit", .string(e.commit)), ("date", .string(e.date)), ("subject", .string(e.subject)),
                         ("changed", .array(e.changed.map { .string($0) })), ("added", .array(e.added.map { .string($0) })),
                         ("removed", .array(e.removed.map { .string($0) })),
                         ("renamed", .array(e.renamed.map { .object([("from", .string($0.from)), ("to", .string($0.to))]) }))])
            }))
            return
        }
        for e in history.entries {
            print("\(e.commit.prefix(10)) \(e.date) \(e.subject)")
            var parts: [String] = []
            if !e.changed.isEmpty { parts.append("\(e.changed.count) changed") }
            if !e.added.isEmpty { parts.append("\(e.added.count) added") }
            if !e.removed.isEmpty { parts.append("\(e.removed.count) removed") }
            if !e.renamed.isEmpty { parts.append("\(e.renamed.count) renamed") }
            let names = e.changed.map { "~\($0)" } + e.added.map { "+\($0)" } + e.removed.map { "-\($0)" } + e.renamed.map { "\($0.from)->\($0.to)" }
            print("    " + parts.joined(separator: ", ") + (names.count <= 8 ? ": " + names.joined(separator: " ") : ""))
        }
    }
}
