import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraRouting

/// An expert library as commands read it: its index and every expert's adapter, parsed and hashed.
struct LoadedExpertLibrary {
    /// The library as named (a folder, or REV:folder).
    var spec: String
    var index: ExpertLibraryIndex
    /// In index order.
    var experts: [EvalAdapter]

    var inputs: [LoRAAdapterInput] { experts.map(\.input) }
    var names: [String] { index.experts.map(\.name) }
}

/// Reading and writing expert libraries (`library.json` and one PEFT adapter folder per expert; see
/// `ExpertLibraryIndex`), on disk or at a revision.
enum ExpertLibraryFiles {
    /// "LIB/NAME", keeping a `REV:` prefix.
    static func path(_ library: String, _ name: String) -> String {
        library.hasSuffix("/") || library.hasSuffix(":") ? library + name : library + "/" + name
    }

    static func readIndex(_ library: String, resolver: CheckpointResolver) throws -> ExpertLibraryIndex {
        let folder = try resolver.folder(library)
        guard try folder.fileNames().contains(ExpertLibraryIndex.fileName) else {
            throw TesseraError(.notFound, "\(library) is not an expert library (no \(ExpertLibraryIndex.fileName))",
                               hint: "create one with `tessera experts add \(library) ADAPTER --base MODEL`")
        }
        return try ExpertLibraryIndex(bytes: try folder.read(ExpertLibraryIndex.fileName, limit: 16 << 20), name: folder.path(ExpertLibraryIndex.fileName))
    }

    /// The library with every expert read and its content hash checked against the index (an expert edited in place
    /// after it was added is refused: results naming it would not say what ran).
    static func load(_ library: String, resolver: CheckpointResolver) throws -> LoadedExpertLibrary {
        let index = try readIndex(library, resolver: resolver)
        guard !index.experts.isEmpty else {
            throw TesseraError(.invalidParameter, "\(library) has no experts", hint: "add one with `tessera experts add \(library) ADAPTER`")
        }
        let experts = try index.experts.map { entry -> EvalAdapter in
            let adapter = try EvalAdapter.resolve(path(library, entry.name), resolver: resolver)
            guard adapter.record.sha256 == entry.sha256 else {
                throw TesseraError(.invalidParameter, "\(path(library, entry.name)) changed since it was added to the library (sha256 \(adapter.record.sha256.prefix(12)), the index says \(entry.sha256.prefix(12)))",
                                   hint: "re-add it: `tessera experts add \(library) \(path(library, entry.name)) --name \(entry.name) --force`")
            }
            return adapter
        }
        return LoadedExpertLibrary(spec: library, index: index, experts: experts)
    }

    /// The task names a `tessera train lora` run records in training.json: each training file's task (older runs
    /// recorded only paths: the file name without `-train.jsonl`).
    static func tasks(fromTrainingRecord bytes: [UInt8]) -> [String] {
        guard let json = try? JSONParser.parse(bytes), let data = json["data"]?.arrayValue else { return [] }
        var out: [String] = []
        for entry in data where (entry["role"]?.stringValue ?? "train") == "train" {
            if let task = entry["task"]?.stringValue {
                out.append(task)
            } else if let path = entry["path"]?.stringValue {
                var name = (path as NSString).lastPathComponent
                for suffix in ["-train.jsonl", ".jsonl"] where name.hasSuffix(suffix) {
                    name = String(name.dropLast(suffix.count))
                    break
                }
                out.append(name)
            }
        }
        var seen = Set<String>()
        return out.filter { seen.insert($0).inserted }
    }

    static func writeIndex(_ index: ExpertLibraryIndex, library: String) throws {
        try AtomicFile.write(Data(index.encoded()), to: path(library, ExpertLibraryIndex.fileName))
    }

    /// Checks every module of `adapter` against the base's weights: the tensor it changes exists with ΔW's shape.
    static func checkFits(_ adapter: LoRAAdapter, name: String, base: TensorSource, baseName: String) throws {
        for m in adapter.modules {
            guard let info = base.tensorInfo(m.target) ?? base.tensorInfo("transformer." + m.target) ?? base.tensorInfo("bert." + m.target) else {
                throw TesseraError(.notFound, "\(name): module '\(m.name)' changes '\(m.target)', which \(baseName) does not have",
                                   hint: "the adapter was made for another base model\(adapter.config.baseModel.map { " ('\($0)')" } ?? "")")
            }
            guard info.shape == m.deltaShape else {
                throw TesseraError(.shapeMismatch, "\(name): module '\(m.name)' changes \(m.target) by a \(m.deltaShape) update, but \(baseName) has it as \(info.shape)",
                                   hint: "the adapter was made for another base model\(adapter.config.baseModel.map { " ('\($0)')" } ?? "")")
            }
        }
    }
}
