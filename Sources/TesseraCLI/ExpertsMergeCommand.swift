import ArgumentParser
import Foundation
import TesseraCore
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraRouting

struct ExpertsMergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Merge a library's experts on ΔW: a full checkpoint, or a new rank-r adapter.",
        discussion: """
        Methods on each module's ΔW = s·B·A (a module an expert lacks counts as
        zero): average, weighted (--weights, one per expert, library order;
        divided by their sum), ties (mergekit's TIES: --density, sign vote,
        divided by the agreeing weights; --lambda scales the result). Without
        --rank the output is the library's base with the merged ΔW added (a
        model folder or file, like `tessera merge -o`); with --rank R it is a
        PEFT adapter holding the best rank-R approximation of each merged ΔW.
        Examples:
          tessera experts merge experts --method ties --density 0.5 -o merged/
          tessera experts merge experts --method average --rank 16 -o experts-avg
        """
    )

    @Argument(help: "The library folder (or REV:folder).") var library: String
    @Option(help: "average, weighted or ties.") var method: String
    @Option(help: "Weights, one per expert in library order, comma-separated (weighted; optional for ties).") var weights: String?
    @Option(help: "TIES: the fraction of each ΔW's entries kept, in (0, 1].") var density: Double = 1
    @Option(name: .customLong("lambda"), help: "TIES: the scale of the merged ΔW.") var lambda: Double = 1
    @Option(help: "Write a PEFT adapter of this rank instead of a full checkpoint.") var rank: Int?
    @OptionGroup var outputOptions: CheckpointOutputOptions
    @Flag(help: "Print a JSON summary.") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func validate() throws {
        guard LibraryMerge.Method(rawValue: method) != nil else {
            throw ValidationError("--method \(method): use average, weighted or ties")
        }
        if let rank, rank < 1 { throw ValidationError("--rank must be 1 or more") }
    }

    func run() throws {
        let started = Date()
        let target = try outputOptions.target()
        _ = try outputOptions.shardSize()
        let resolver = CheckpointResolver(directory: directory)
        defer { resolver.finish() }
        let loaded = try ExpertLibraryFiles.load(library, resolver: resolver)
        let folders = try loaded.names.map { try resolver.checkpoint(ExpertLibraryFiles.path(library, $0)).adapterFolder() }
        let parsedWeights = try weights.map { text -> [Double] in
            let parts = text.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard parts.count == folders.count, parts.allSatisfy({ $0?.isFinite == true }) else {
                throw TesseraError(.usage, "--weights needs \(folders.count) numbers (one per expert: \(loaded.names.joined(separator: ", ")))", hint: "e.g. --weights \(Array(repeating: "1", count: folders.count).joined(separator: ","))")
            }
            return parts.compactMap { $0 }
        }
        let kind = LibraryMerge.Method(rawValue: method) ?? .average
        let merge = try LibraryMerge(experts: folders, options: .init(method: kind, weights: parsedWeights, density: density, lambda: lambda))
        let config: [(String, JSONValue)] = [("operation", .string("experts merge")), ("library", .string(library)), ("method", .string(method)),
                                             ("experts", .array(loaded.names.map { .string($0) })),
                                             ("sha256", .array(loaded.experts.map { .string($0.record.sha256) })),
                                             ("weights", parsedWeights.map { .array($0.map { .double($0) }) } ?? .null),
                                             ("density", .double(density)), ("lambda", .double(lambda)), ("rank", rank.map { .int($0) } ?? .null)]
        var files: [String] = []
        if let rank {
            let adapter = try merge.adapter(rank: rank)
            let writer = try CheckpointOutputWriter(target: target, headerReserve: 1 << 20, weightsName: "adapter_model")
            try adapter.write { try writer.append($0, $1) }
            let card = ModelCard(title: URL(fileURLWithPath: target.path).standardizedFileURL.lastPathComponent, baseModels: [], libraryName: "peft",
                                 summary: "made by `tessera experts merge`: the \(folders.count) experts of `\(library)` merged with \(method) on ΔW, then the best rank-\(rank) approximation of each module",
                                 inputs: loaded.names.map { ("expert", ExpertLibraryFiles.path(library, $0)) }, parameters: nil,
                                 configYAML: YAMLText.block(.object(config)), configHeading: "Library merge")
            files = try writer.finish(metadata: [("format", "pt"), ("tessera.merge.format", "1"), ("tessera.merge.method", "experts-\(method)"),
                                                 ("tessera.merge.library", JSONValue.object(config).serialized())],
                                      sideFiles: [(CheckpointFolderLayout.adapterConfigName, Array(adapter.config.serialized().utf8))]) { card.render(files: $0) }.files
        } else {
            guard let baseName = loaded.index.base else {
                throw TesseraError(.invalidParameter, "\(library) names no base model to merge into", hint: "pass --rank R for an adapter instead")
            }
            let base = try resolver.checkpoint(RoutedEvaluation.sibling(baseName, of: library))
            let merged = try merge.checkpoint(base: base.source, name: "\(baseName)+\(library)")
            let writer = try OutputCheckpoint(options: outputOptions, target: target, reference: base, dtype: nil,
                                              headerReserve: TaskVectorCommand.headerReserve(base.source, inputs: 1))
            for name in merged.tensorNames { try writer.append(name, try merged.rawTensor(name)) }
            let card = ModelCard(title: "", baseModels: OutputCheckpoint.hubIDs([base]), libraryName: "transformers",
                                 summary: "made by `tessera experts merge`: `\(baseName)` with the \(folders.count) experts of `\(library)` merged with \(method) on ΔW",
                                 inputs: [("base", baseName)] + loaded.names.map { ("expert", ExpertLibraryFiles.path(library, $0)) }, parameters: nil,
                                 configYAML: YAMLText.block(.object(config)), configHeading: "Library merge")
            files = try writer.finish(metadata: [("tessera.merge.format", "1"), ("tessera.merge.method", "experts-\(method)"),
                                                 ("tessera.merge.library", JSONValue.object(config).serialized())], card: card).files
        }
        let seconds = Date().timeIntervalSince(started)
        if json {
            printJSON(.object([("output", .string(target.path)), ("method", .string(method)), ("experts", .int(folders.count)),
                               ("rank", rank.map { .int($0) } ?? .null), ("seconds", .double(seconds)), ("files", .array(files.map { .string($0) }))]))
        } else {
            print(String(format: "merged %d experts of %@ with %@ into %@ at %@ (%@) in %.2f s", folders.count, library, method,
                         rank.map { "a rank-\($0) adapter" } ?? "a full checkpoint", target.path, files.joined(separator: ", "), seconds))
        }
    }
}
