import Foundation
import TesseraCore
import TesseraIO
import TesseraStore

/// One version of a tracked file as git hands it to a diff or merge driver: a manifest (the clean form; its tensors
/// are read from the object store) or the real file.
public enum CheckpointVersion {
    /// The version as one side of a `ManifestDiff`, with its tensors for numeric summaries; nil for `/dev/null` (no
    /// such version) and for a file that is neither a manifest nor a safetensors checkpoint.
    public static func open(path: String, store: ObjectStore, label: String) throws -> ManifestDiff.Side? {
        if path == "/dev/null" { return nil }
        let head = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: path)).readData(ofLength: 17)).map { Array($0) } ?? []
        if Manifest.looksLikeManifest(head) {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let m = try Manifest.parse(text, file: label)
            return ManifestDiff.Side(m, source: try StoredCheckpoint(manifest: m, store: store, name: label))
        }
        guard SafetensorsLayout.looksLikeSafetensors(prefix: head) else { return nil }
        let file = try SafetensorsFile(path: path)
        return ManifestDiff.Side(tensors: file.layout.tensors.map { ($0.name, $0.dtype, $0.shape) },
                                 rawSHA256: { SHA256Hasher.hex(try file.tensor($0).bytes) }, source: file)
    }
}
