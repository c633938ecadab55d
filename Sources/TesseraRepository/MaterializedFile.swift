import Foundation
import TesseraCore
import TesseraIO
import TesseraStore

/// A tracked file whose manifest is not a safetensors checkpoint (a GGUF, a PyTorch zip, a NumPy `.npz`), read at a
/// revision without a checkout. Their readers map a real file, so the file is rebuilt from its objects into the
/// store's tmp folder, handed to `open`, and unlinked as soon as `open` returns: the mapping keeps the bytes alive, and
/// a process killed in between leaves only a temporary file that `tessera gc` removes with the rest of tmp/.
public enum MaterializedFile {
    /// Rebuilds `manifest`'s file (fetching missing objects first), calls `open` with its path, then unlinks it.
    /// Every object is verified while the file is rebuilt; a failure leaves nothing behind.
    public static func open<T>(_ manifest: Manifest, name: String, repository: Repository, _ open: (String) throws -> T) throws -> T {
        try repository.fetchMissingObjects(of: [manifest], forFile: name)
        let store = repository.store
        let ext = (name as NSString).pathExtension
        let path = store.tmpDirectory + "/materialized-" + FileSystem.uniqueName() + (ext.isEmpty ? "" : "." + ext)
        defer { FileSystem.remove(path) }
        let file = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
        try store.reconstruct(manifest, file: name) { try file.writeAll($0) }
        withExtendedLifetime(file) {}
        return try open(path)
    }
}
