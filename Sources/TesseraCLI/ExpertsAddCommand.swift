import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraRouting

struct ExpertsAddCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add a PEFT LoRA adapter to a library (created if absent).",
        discussion: """
        The adapter (a folder, or REV:folder) is copied into LIBRARY/NAME
        (adapter_config.json, adapter_model.safetensors, and training.json when
        Tessera trained it) and recorded in library.json with its tasks and
        content hash. Each module must change a weight of the library's base
        with the shape its update has; an adapter made for another base is
        refused. Tasks default to those training.json names.
        Examples:
          tessera experts add experts adapters/sst2 --base smollm2
          tessera experts add experts HEAD~2:adapters/qa --name qa --task arc-easy
        """
    )

    @Argument(help: "The library folder (created with --base if it does not exist).") var library: String
    @Argument(help: "The PEFT adapter folder (or REV:folder).") var adapter: String
    @Option(help: "The expert's name in the library (default: the adapter folder's name).") var name: String?
    @Option(name: .customLong("task"), help: "A task the expert was trained on. Repeatable (default: from training.json).") var tasks: [String] = []
    @Option(help: "The base model the library's experts are for (a model folder in the repository); needed to create a library.") var base: String?
    @Flag(help: "Replace an expert of the same name.") var force = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func run() throws {
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        defer { resolver.finish() }
        var isDirectory: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: library, isDirectory: &isDirectory)
        if exists, !isDirectory.boolValue {
            throw TesseraError(.usage, "\(library) is a file, not a library folder", hint: "name a folder")
        }
        let hasIndex = FileManager.default.fileExists(atPath: ExpertLibraryFiles.path(library, ExpertLibraryIndex.fileName))
        var index: ExpertLibraryIndex
        if hasIndex {
            index = try ExpertLibraryFiles.readIndex(library, resolver: resolver)
            if let base, let current = index.base, base != current {
                throw TesseraError(.invalidParameter, "\(library) is a library for \(current), not \(base)", hint: "add the adapter to a library for \(base)")
            }
        } else {
            guard let base else {
                throw TesseraError(.usage, "\(library) is not a library yet: name its base model with --base MODEL", hint: "e.g. --base smollm2")
            }
            index = ExpertLibraryIndex(base: base)
        }
        let expertName = name ?? (RevisionPath.trimmingSlashes(adapter).split(separator: "/").last.map(String.init) ?? adapter)
            .split(separator: ":").last.map(String.init) ?? adapter
        try ExpertLibraryIndex.checkName(expertName)
        if index.experts.contains(where: { $0.name == expertName }), !force {
            throw TesseraError(.usage, "\(library) already has an expert '\(expertName)'", hint: "pass --name NEW, or --force to replace it")
        }

        let checkpoint = try resolver.checkpoint(adapter)
        let folder = try checkpoint.adapterFolder()
        let parsed = try LoRAAdapter(configBytes: folder.configBytes, tensors: folder.tensors, name: adapter)
        guard !parsed.modules.isEmpty else {
            throw TesseraError(.invalidParameter, "\(adapter): the adapter has no LoRA modules", hint: "name a PEFT LoRA adapter folder")
        }
        if let baseName = index.base {
            let baseSource = try resolver.checkpoint(baseName).source
            try ExpertLibraryFiles.checkFits(parsed, name: adapter, base: baseSource, baseName: baseName)
        }
        // Experts of one library must agree on the base they name, when they name one.
        if let mine = parsed.config.baseModel, let other = index.experts.first {
            let otherAdapter = try? EvalAdapter.resolve(ExpertLibraryFiles.path(library, other.name), resolver: resolver)
            if let theirs = otherAdapter?.input.adapter.config.baseModel, theirs != mine, !force {
                throw TesseraError(.invalidParameter, "\(adapter) was made for '\(mine)', the library's experts for '\(theirs)'",
                                   hint: "add it to a library for that base (or --force if the two names are one model)")
            }
        }
        let sideFiles = (try? checkpoint.sideFiles?.fileNames()) ?? nil ?? []
        let training = sideFiles.contains("training.json") ? try checkpoint.sideFiles?.read("training.json", limit: 64 << 20) : nil
        let taskNames = tasks.isEmpty ? training.map(ExpertLibraryFiles.tasks(fromTrainingRecord:)) ?? [] : tasks
        if taskNames.isEmpty {
            printError("tessera: note: \(expertName) names no task (give --task NAME); the oracle router cannot choose it")
        }

        // The expert's folder is written beside and renamed into place; the index last.
        try FileManager.default.createDirectory(atPath: library, withIntermediateDirectories: true)
        let destination = ExpertLibraryFiles.path(library, expertName)
        let staging = ExpertLibraryFiles.path(library, ".\(expertName).adding-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: false)
        var published = false
        defer { if !published { try? FileManager.default.removeItem(atPath: staging) } }
        try AtomicFile.write(Data(folder.configBytes), to: staging + "/" + LoRAAdapter.configName)
        let tensors = try folder.tensors.tensorNames.map { ($0, try folder.tensors.rawTensor($0)) }
        try SafetensorsWriter.write(tensors: tensors, metadata: [("format", "pt")], to: staging + "/" + LoRAAdapter.weightsName)
        if let training { try AtomicFile.write(Data(training), to: staging + "/training.json") }
        let hash = try EvalAdapter.contentHash(config: folder.configBytes, tensors: SafetensorsFile(path: staging + "/" + LoRAAdapter.weightsName))
        if FileManager.default.fileExists(atPath: destination) {
            guard force else {
                throw TesseraError(.usage, "\(destination) already exists", hint: "pass --name NEW, or --force to replace it")
            }
            let old = ExpertLibraryFiles.path(library, ".\(expertName).replaced-\(UUID().uuidString.prefix(8))")
            try FileManager.default.moveItem(atPath: destination, toPath: old)
            try FileManager.default.moveItem(atPath: staging, toPath: destination)
            try? FileManager.default.removeItem(atPath: old)
        } else {
            try FileManager.default.moveItem(atPath: staging, toPath: destination)
        }
        published = true
        let entry = ExpertLibraryIndex.Entry(name: expertName, tasks: taskNames, sha256: hash, source: adapter)
        if let i = index.experts.firstIndex(where: { $0.name == expertName }) { index.experts[i] = entry } else { index.experts.append(entry) }
        try ExpertLibraryFiles.writeIndex(index, library: library)
        print("added \(expertName) to \(library): \(parsed.modules.count) modules, rank \(Set(parsed.modules.map(\.rank)).sorted().map(String.init).joined(separator: ",")), tasks \(taskNames.isEmpty ? "(none)" : taskNames.joined(separator: ", ")), sha256:\(hash.prefix(12))")
    }
}
