import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraRouting

struct ExpertsShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show one expert: its adapter config, modules and how it was made.",
        discussion: """
        The provenance is the expert's training.json when Tessera trained it
        (base revision and object ids, data hashes, hyperparameters, losses).
        Examples:
          tessera experts show experts sst2
          tessera experts show HEAD:experts sst2 --json
        """
    )

    @Argument(help: "The library folder (or REV:folder).") var library: String
    @Argument(help: "The expert's name.") var name: String
    @Flag(help: "Print JSON.") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func run() throws {
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        let index = try ExpertLibraryFiles.readIndex(library, resolver: resolver)
        guard let entry = index.experts.first(where: { $0.name == name }) else {
            throw TesseraError(.notFound, "\(library) has no expert '\(name)'", hint: "`tessera experts list \(library)` lists them")
        }
        let spec = ExpertLibraryFiles.path(library, name)
        let adapter = try EvalAdapter.resolve(spec, resolver: resolver)
        let folder = try resolver.folder(spec)
        let training = try folder.fileNames().contains("training.json") ? try? JSONParser.parse(try folder.read("training.json", limit: 64 << 20)) : nil
        let a = adapter.input.adapter
        if json {
            printJSON(.object([
                ("name", .string(entry.name)), ("tasks", .array(entry.tasks.map(JSONValue.string))), ("sha256", .string(entry.sha256)),
                ("sha256_now", .string(adapter.record.sha256)), ("source", entry.source.map(JSONValue.string) ?? .null),
                ("config", a.config.json),
                ("modules", .array(a.modules.map { .object([("name", .string($0.name)), ("rank", .number(Double($0.rank), text: "\($0.rank)")),
                                                           ("scaling", .number($0.scaling, text: "\($0.scaling)"))]) })),
                ("training", training ?? .null),
            ]))
            return
        }
        print("expert \(entry.name) in \(library)")
        print("  tasks: \(entry.tasks.joined(separator: ", "))")
        print("  sha256: \(entry.sha256)" + (adapter.record.sha256 == entry.sha256 ? "" : "  (the files now hash to \(adapter.record.sha256): changed since added)"))
        if let s = entry.source { print("  source: \(s)") }
        print("  LoRA: r=\(a.config.rank) alpha=\(a.config.alpha)\(a.config.useRSLoRA ? " rslora" : ""), \(a.modules.count) modules, targets \(a.config.targetModules.joined(separator: ","))")
        if let base = a.config.baseModel { print("  base_model_name_or_path: \(base)") }
        if let training {
            print("  trained by tessera: \(training["steps"]?.intValue.map(String.init) ?? "?") steps, final loss \(training["final_loss"]?.doubleValue.map { String(format: "%.4f", $0) } ?? "?")")
            if let base = training["base"] {
                let commit = base["commit"]?.stringValue.map { " at commit \($0)" } ?? ""
                print("  base: \(base["name"]?.stringValue ?? base.stringValue ?? "?")\(commit)")
            }
            for d in training["data"]?.arrayValue ?? [] {
                print("  data: \(d["path"]?.stringValue ?? "?") sha256:\(d["sha256"]?.stringValue?.prefix(12) ?? "?")")
            }
        }
    }
}
