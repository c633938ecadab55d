import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraStore

/// One version of a tracked GGUF, PyTorch or NumPy file as the diff driver sees it (its manifest, or the file itself
/// from the worktree): read through the format's own reader, so that `git diff` compares tensors (a GGUF's
/// dequantised, so a re-quantisation shows how far values moved) and metadata (GGUF key/values).
struct FormatDiffSide {
    var side: ManifestDiff.Side
    var metadata: [(String, String)]

    /// Nil when `file` is none of these formats (safetensors and its manifests take the existing path).
    static func open(_ file: String, label: String, repository: Repository) throws -> FormatDiffSide? {
        guard file != "/dev/null" else { return nil }
        let head = DiskCheckpointFolder.prefix(file, count: 32)
        if Manifest.looksLikeManifest(head) {
            let manifest = try Manifest.parse(String(decoding: try FileSystem.readFile(file, limit: 256 << 20), as: UTF8.self), file: label)
            guard [.gguf, .pytorch, .npz].contains(manifest.format) else { return nil }
            let source = try MaterializedFile.open(manifest, name: label, repository: repository) { try reader($0, format: manifest.format, label: label) }
            return FormatDiffSide(source)
        }
        switch CheckpointFileFormat.detect(prefix: head) {
        case .gguf: return FormatDiffSide(try reader(file, format: .gguf, label: label))
        case .zip: return FormatDiffSide(try reader(file, format: try TorchCheckpoint.isTorchArchive(path: file) ? .pytorch : .npz, label: label))
        default: return nil
        }
    }

    static func reader(_ path: String, format: Manifest.Format, label: String) throws -> TensorSource {
        switch format {
        case .gguf: return try GGUFFile(path: path)
        case .pytorch: return try TorchCheckpoint(path: path, name: label)
        default: return try NumpyArchive(path: path, name: label)
        }
    }

    init(_ source: TensorSource) {
        let tensors = source.tensorNames.compactMap { name in source.tensorInfo(name).map { (name, $0.dtype, $0.shape) } }
        // A GGUF tensor is compared by its blocks as stored (and its type), which costs no dequantisation. A tensor the
        // reader cannot decode (a GGML type the engine does not know) compares as changed.
        let gguf = source as? GGUFFile
        side = ManifestDiff.Side(tensors: tensors, rawSHA256: { name in
            if let gguf, let info = gguf.info(name) {
                return (try? gguf.withEncodedBytes(name) { "\(info.type) " + SHA256Hasher.hex($0) }) ?? "unreadable " + UUID().uuidString
            }
            return (try? source.rawTensor(name)).map { SHA256Hasher.hex($0.bytes) } ?? "unreadable " + UUID().uuidString
        }, source: source)
        metadata = source.metadata
    }

    /// "metadata KEY: OLD -> NEW" for every key whose value changed, was added or was removed, in the new file's order
    /// (removed keys last).
    static func metadataLines(old: [(String, String)], new: [(String, String)]) -> [String] {
        func short(_ v: String) -> String { v.count > 80 ? String(v.prefix(77)) + "..." : v }
        let before = Dictionary(old, uniquingKeysWith: { a, _ in a })
        let after = Dictionary(new, uniquingKeysWith: { a, _ in a })
        var lines: [String] = []
        for (k, v) in new {
            if let was = before[k] {
                if was != v { lines.append("metadata  \(k): \(short(was)) -> \(short(v))") }
            } else {
                lines.append("metadata  \(k): added \(short(v))")
            }
        }
        for (k, v) in old where after[k] == nil { lines.append("metadata  \(k): removed (was \(short(v)))") }
        return lines
    }
}
