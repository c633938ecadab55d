import CoreFoundation  // owns `stat` as Foundation imports it on Linux
import Foundation
import TesseraCore
import TesseraIO
import TesseraTraining

/// The output folder of `tessera train lora`: checked before any work, holds the run's `.checkpoint/` while it
/// trains, and at the end the PEFT adapter and training.json (written last: its presence means "finished").
/// Only the files a training run writes are ever replaced or removed; anything else in the folder stops the run.
enum TrainingOutputFolder {
    static let trainingName = "training.json"
    static let ownFiles: Set<String> = [LoRAAdapter.configName, LoRAAdapter.weightsName, trainingName, TrainingCheckpoint.folderName]

    /// Whether a checkpoint to resume may be there. Refuses a link, a file, a folder with files a training run does
    /// not write, and a finished run unless `force` (which then starts over, removing only the run's checkpoint).
    static func prepare(_ path: String, force: Bool) throws -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else { return false }
        switch st.st_mode & S_IFMT {
        case S_IFDIR: break
        case S_IFLNK:
            throw TesseraError(.conflict, "\(path) is a symbolic link; nothing was written",
                               hint: "tessera does not write through links: name the folder itself, or a new path")
        default:
            throw TesseraError(.conflict, "\(path) exists and is not a folder; nothing was written", hint: "choose another output folder (-o)")
        }
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
            throw TesseraError(.io, "\(path): cannot list the folder", hint: "check that it is readable", underlying: error)
        }
        let foreign = entries.filter { !ownFiles.contains($0) && !isOwnTemporary($0) }.sorted()
        if !foreign.isEmpty {
            throw TesseraError(.conflict, "\(path) holds files a training run does not write (\(foreign.prefix(3).joined(separator: ", "))\(foreign.count > 3 ? ", ..." : "")); nothing was written",
                               hint: "choose a new output folder (-o), or move those files away yourself")
        }
        let checkpointFolder = (path as NSString).appendingPathComponent(TrainingCheckpoint.folderName)
        if entries.contains(TrainingCheckpoint.folderName) {
            guard lstat(checkpointFolder, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                throw TesseraError(.conflict, "\(checkpointFolder) is not a folder; nothing was written", hint: "move it away yourself")
            }
            let inside = (try? FileManager.default.contentsOfDirectory(atPath: checkpointFolder)) ?? []
            let strange = inside.filter { $0 != TrainingCheckpoint.fileName && !isOwnTemporary($0) }
            if !strange.isEmpty {
                throw TesseraError(.conflict, "\(checkpointFolder) holds files a training run does not write (\(strange.sorted().prefix(3).joined(separator: ", "))); nothing was written",
                                   hint: "move them away yourself")
            }
        }
        if entries.contains(trainingName) {
            guard force else {
                throw TesseraError(.conflict, "\(path) holds a finished training run (\(trainingName)); nothing was written",
                                   hint: "choose a new output folder (-o), or add --force to replace it")
            }
            removeCheckpoint(in: path)
            return false
        }
        if force {
            removeCheckpoint(in: path)
            return false
        }
        return FileManager.default.fileExists(atPath: TrainingCheckpoint.path(in: path))
    }

    /// A temporary file a killed run may have left: Tessera's own, or the one Foundation's atomic write
    /// (`AtomicFile`, safetensors writes) creates beside its target (".dat.nosync…") before renaming it.
    static func isOwnTemporary(_ name: String) -> Bool { name.contains(".tessera-tmp-") || name.hasPrefix(".dat.nosync") }

    /// Removes the run's checkpoint file and temporary files, then the folder if that left it empty.
    static func removeCheckpoint(in path: String) {
        let folder = (path as NSString).appendingPathComponent(TrainingCheckpoint.folderName)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
            where name == TrainingCheckpoint.fileName || isOwnTemporary(name) {
            unlink((folder as NSString).appendingPathComponent(name))
        }
        rmdir(folder)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] where isOwnTemporary(name) {
            unlink((path as NSString).appendingPathComponent(name))
        }
    }

    /// The adapter (tensors in name order, float32, as PEFT's safetensors writer orders them), its config, then
    /// training.json; each written beside and renamed. The checkpoint goes once the run is complete on disk.
    static func write(_ path: String, parameters: LoRAParameters, config: JSONValue, training: JSONValue, checkpoint: String) throws {
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw TesseraError(.io, "\(path): cannot create the output folder", hint: "check that its parent is writable", underlying: error)
        }
        try TrainingCheckpoint.writeAtomically(adapterBytes(parameters), to: (path as NSString).appendingPathComponent(LoRAAdapter.weightsName))
        try TrainingCheckpoint.writeAtomically(Array(prettyJSON(config).utf8), to: (path as NSString).appendingPathComponent(LoRAAdapter.configName))
        try TrainingCheckpoint.writeAtomically(Array((prettyJSON(training) + "\n").utf8), to: (path as NSString).appendingPathComponent(trainingName))
        removeCheckpoint(in: path)
    }

    /// adapter_model.safetensors as PEFT saves it: `base_model.model.<module>.lora_A.weight` [r, in] and
    /// `lora_B.weight` [out, r], metadata {"format": "pt"}.
    static func adapterBytes(_ parameters: LoRAParameters) throws -> [UInt8] {
        var tensors: [(name: String, values: [Float], shape: [Int])] = []
        for m in parameters.modules {
            let prefix = LoRAAdapter.peftPrefix + m.module.name
            tensors.append((prefix + ".lora_A.weight", m.a, [m.rank, m.module.inputs]))
            tensors.append((prefix + ".lora_B.weight", m.b, [m.module.outputs, m.rank]))
        }
        tensors.sort { $0.name < $1.name }
        let entries = SafetensorsHeader.contiguous(tensors.map { ($0.name, DType.f32, $0.shape) })
        guard let header = SafetensorsHeader.encode(entries, metadata: [("format", "pt")]) else {
            throw TesseraError(.io, "cannot encode the adapter's safetensors header")
        }
        var bytes = header
        for t in tensors { bytes += TrainingCheckpoint.floatBytes(t.values) }
        return bytes
    }
}
