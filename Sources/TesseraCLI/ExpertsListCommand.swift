import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraRouting

struct ExpertsListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List a library's experts: tasks, rank, modules, content hash, source.",
        discussion: """
        Examples:
          tessera experts list experts
          tessera experts list HEAD~3:experts --json
        """
    )

    @Argument(help: "The library folder (or REV:folder).") var library: String
    @Flag(help: "Print JSON.") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func run() throws {
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        let loaded = try ExpertLibraryFiles.load(library, resolver: resolver)
        var rows: [JSONValue] = []
        if !json {
            print("library \(library): \(loaded.experts.count) experts" + (loaded.index.base.map { " for \($0)" } ?? ""))
            print("name".padding(toLength: 18, withPad: " ", startingAt: 0) + "tasks".padding(toLength: 22, withPad: " ", startingAt: 0)
                  + "rank  modules  sha256        source")
        }
        for (entry, expert) in zip(loaded.index.experts, loaded.experts) {
            let adapter = expert.input.adapter
            let ranks = Set(adapter.modules.map(\.rank)).sorted().map(String.init).joined(separator: ",")
            if json {
                rows.append(.object([("name", .string(entry.name)), ("tasks", .array(entry.tasks.map(JSONValue.string))),
                                     ("rank", .string(ranks)), ("modules", .number(Double(adapter.modules.count), text: "\(adapter.modules.count)")),
                                     ("sha256", .string(entry.sha256)), ("source", entry.source.map(JSONValue.string) ?? .null)]))
            } else {
                print(entry.name.padding(toLength: 17, withPad: " ", startingAt: 0) + " "
                      + entry.tasks.joined(separator: ",").padding(toLength: 21, withPad: " ", startingAt: 0) + " "
                      + ranks.padding(toLength: 5, withPad: " ", startingAt: 0) + " "
                      + String(adapter.modules.count).padding(toLength: 8, withPad: " ", startingAt: 0) + " "
                      + String(entry.sha256.prefix(12)) + "  " + (entry.source ?? ""))
            }
        }
        if json {
            printJSON(.object([("library", .string(library)), ("base", loaded.index.base.map(JSONValue.string) ?? .null), ("experts", .array(rows))]))
        }
    }
}
