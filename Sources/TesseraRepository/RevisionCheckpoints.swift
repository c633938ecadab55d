import Foundation
import TesseraCore
import TesseraGit
import TesseraMerge
import TesseraStore
import TesseraIO

/// The repository side of checkpoint names: `REV:path` (a tracked file, or a shard index committed beside its
/// shards) and `REV:folder` (a Hugging Face folder at a revision: its weights from the object store, its config and
/// tokenizer files from git).
final class RevisionCheckpoints {
    let repository: Repository
    /// Opens a tracked safetensors checkpoint from its manifest (fetching missing objects, recording hashes).
    let openStored: (Manifest, String) throws -> TensorSource

    init(repository: Repository, openStored: @escaping (Manifest, String) throws -> TensorSource) {
        self.repository = repository
        self.openStored = openStored
    }

    /// `REV:path` or `REV:folder` as a checkpoint.
    func checkpoint(_ spec: String, resolver: CheckpointResolver) throws -> ResolvedCheckpoint {
        let trimmed = RevisionPath.trimmingSlashes(spec)
        let address = RevisionPath(trimmed)
        let (rev, path) = (address.rev, address.path)
        if repository.git.objectKind(trimmed) == .folder {
            return try resolver.open(folder: RevisionFolder(revisions: self, rev: rev, path: path), name: spec)
        }
        let beside = RevisionFolder(revisions: self, rev: rev, path: (path as NSString).deletingLastPathComponent)
        let bytes = try repository.git.blob(trimmed)
        if Manifest.looksLikeManifest(bytes) {
            let manifest = try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: spec)
            return ResolvedCheckpoint(name: spec, source: try openStored(manifest, spec), layout: .file, isFolder: false,
                                      sideFiles: trimmed.hasPrefix(":") ? nil : beside)
        }
        if CheckpointFileFormat.detect(prefix: Array(bytes.prefix(32))) == .json, !trimmed.hasPrefix(":") {
            // A shard index committed as a plain file, its shards tracked beside it.
            let name = (path as NSString).lastPathComponent
            let sharded = try CheckpointFolderLayout.openSharded(index: name, in: beside)
            resolver.register(sharded)
            return ResolvedCheckpoint(name: spec, source: sharded, layout: .sharded(shards: sharded.shards.count), isFolder: false, sideFiles: beside)
        }
        throw RevisionCheckpoints.untracked(spec, bytes: bytes, hint: "`tessera track PATTERN` tracks files matching PATTERN from the next `git add`")
    }

    /// A file of a folder at a revision: its bytes from git (a small file tracked by tessera is rebuilt from the store).
    func readFile(_ spec: String, size: Int, limit: Int) throws -> [UInt8] {
        guard size <= limit else {
            throw TesseraError(.invalidCheckpoint, "\(spec): \(size) bytes is larger than such a file can be (at most \(limit))",
                               hint: "check that the file is what its name says")
        }
        let bytes = try repository.git.blob(spec)
        guard Manifest.looksLikeManifest(bytes) else { return bytes }
        let manifest = try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: spec)
        guard manifest.size <= limit else {
            throw TesseraError(.invalidCheckpoint, "\(spec): \(manifest.size) bytes is larger than such a file can be (at most \(limit))",
                               hint: "check that the file is what its name says")
        }
        try repository.fetchMissingObjects(of: [manifest], forFile: spec)
        var out: [UInt8] = []
        out.reserveCapacity(manifest.size)
        try repository.store.reconstruct(manifest, file: spec) { out.append(contentsOf: $0) }
        return out
    }

    /// Why a file at a revision is not a checkpoint Tessera tracks: a Git LFS pointer (a .gitattributes rule, such as
    /// the one Hugging Face folders carry, sent it to git-lfs) or a plain blob.
    static func untracked(_ spec: String, bytes: [UInt8], hint: String) -> TesseraError {
        if bytes.starts(with: Array("version https://git-lfs.github.com/spec/".utf8)) {
            return TesseraError(.notFound, "\(spec) is a Git LFS pointer: a .gitattributes rule sent it to git-lfs, not to tessera",
                                hint: "remove that rule (Hugging Face folders carry a .gitattributes of their own), then `git rm --cached` the file and `git add` it again")
        }
        return TesseraError(.notFound, "\(spec) is not tracked by tessera (git stores it as a plain file)", hint: hint)
    }

    /// A tracked checkpoint of a folder at a revision.
    func openCheckpoint(_ spec: String) throws -> TensorSource {
        let bytes = try repository.git.blob(spec)
        guard Manifest.looksLikeManifest(bytes) else {
            throw Self.untracked(spec, bytes: bytes, hint: "`tessera track '*.safetensors'` tracks checkpoints from the next `git add`")
        }
        return try openStored(try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: spec), spec)
    }

}

/// A folder at a revision, as a checkpoint folder.
public struct RevisionFolder: CheckpointFolder {
    let revisions: RevisionCheckpoints
    public let rev: String
    /// The folder's path in the revision ("" for its top).
    public let path: String

    public var name: String { "\(rev):\(path)" }

    func spec(_ file: String) -> String { path.isEmpty ? "\(rev):\(file)" : "\(rev):\(path)/\(file)" }

    private func entries() throws -> [GitRepository.TreeEntry] {
        try revisions.repository.git.treeEntries(name).filter { $0.kind == .file }
    }

    public func fileNames() throws -> [String] { try entries().map(\.name).sorted() }

    public func read(_ file: String, limit: Int) throws -> [UInt8] {
        guard let entry = try entries().first(where: { $0.name == file }) else {
            throw TesseraError(.notFound, "\(spec(file)): no such file at that revision", hint: "`git ls-tree \(name)` lists the folder")
        }
        return try revisions.readFile(spec(file), size: entry.size, limit: limit)
    }

    public func openCheckpoint(_ file: String) throws -> TensorSource { try revisions.openCheckpoint(spec(file)) }
}
