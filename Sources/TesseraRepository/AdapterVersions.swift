import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraMerge
import TesseraStore

/// The two files of a PEFT adapter folder are separate paths to git: a diff or merge driver receives one version of
/// one of them (its blob) and must find the other file of the same version. This finds it among the versions git
/// holds: the worktree (for a worktree side, which git names with a null id), the index, HEAD and the in-progress
/// merge, cherry-pick or rebase heads, and the commits of every ref that touched the folder (at most
/// `commitLimit`). A pairing is used only when every version with this blob agrees on the sibling; otherwise it is
/// reported as unknown, never guessed.
public struct AdapterVersions {
    public let repository: Repository
    public var commitLimit = 2000

    public init(repository: Repository) {
        self.repository = repository
    }

    public static let weightsName = CheckpointFolderLayout.adapterName
    public static let configName = CheckpointFolderLayout.adapterConfigName

    /// Whether `path` (relative to the top) is one of an adapter folder's two files.
    public static func isAdapterFile(_ path: String) -> Bool {
        let last = (path as NSString).lastPathComponent
        return last == weightsName || last == configName
    }

    /// The other file of the folder.
    public static func sibling(of path: String) -> String {
        let dir = (path as NSString).deletingLastPathComponent
        let other = (path as NSString).lastPathComponent == weightsName ? configName : weightsName
        return dir.isEmpty ? other : dir + "/" + other
    }

    public enum Version {
        /// A blob's bytes (for the weights, a manifest).
        case blob([UInt8])
        /// A file in the worktree.
        case file(String)
    }

    /// The sibling of `path` in the version where `path` has blob `oid` (nil or all zeros: the worktree's version).
    /// `preferring`: revisions known to hold this version (a merge's HEAD, MERGE_HEAD, merge base), tried first: the
    /// first of them whose `path` has that blob gives the sibling, even when other commits pair the blob otherwise.
    public func sibling(of path: String, oid: String?, preferring: [String] = []) throws -> Version? {
        let other = Self.sibling(of: path)
        if oid == nil || oid!.allSatisfy({ $0 == "0" }) || oid == "." {
            let full = try repository.worktree + "/" + other
            return FileManager.default.fileExists(atPath: full) ? .file(full) : nil
        }
        let dir = (path as NSString).deletingLastPathComponent
        var revisions = [":0", "HEAD", "MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "REBASE_HEAD", "ORIG_HEAD"]
        let top = try repository.worktree
        if let r = try? Subprocess.run(["git", "rev-list", "--all", "-n", String(commitLimit), "--", dir.isEmpty ? "." : dir], directory: top), r.status == 0 {
            revisions += r.stdoutText.split(separator: "\n").map(String.init)
        }
        revisions = preferring + revisions
        var input = ""
        for rev in revisions { input += "\(rev):\(path)\n\(rev):\(other)\n" }
        let r = try Subprocess.run(["git", "cat-file", "--batch-check=%(objectname)"], directory: top, input: Array(input.utf8))
        guard r.status == 0 else { return nil }
        let lines = r.stdoutText.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var found = Set<String>()
        for k in revisions.indices where 2 * k + 1 < lines.count {
            let mine = lines[2 * k], theirs = lines[2 * k + 1]
            guard mine.hasPrefix(oid!) || oid!.hasPrefix(mine), mine.count >= 7, !theirs.hasSuffix("missing"), theirs.count >= 40 else { continue }
            if k < preferring.count {
                found = [theirs]
                break
            }
            found.insert(theirs)
        }
        guard found.count == 1, let sibling = found.first else { return nil }
        guard let bytes = repository.git.blobBytes(id: sibling) else { return nil }
        return .blob(bytes)
    }

    /// An adapter version from its weights (a manifest or a safetensors file) and its config bytes.
    public func open(weights: Version, config: [UInt8], label: String) throws -> AdapterFolder {
        let source: TensorSource
        switch weights {
        case let .file(path):
            let head = DiskCheckpointFolder.prefix(path, count: 32)
            if Manifest.looksLikeManifest(head) {
                return try open(weights: .blob(try FileSystem.readFile(path)), config: config, label: label)
            }
            source = try SafetensorsFile(path: path)
        case let .blob(bytes):
            guard Manifest.looksLikeManifest(bytes) else {
                throw TesseraError(.invalidCheckpoint, "\(label): the adapter weights are not stored by tessera", hint: "track adapter_model.safetensors with tessera track")
            }
            let manifest = try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: label)
            try repository.fetchMissingObjects(of: [manifest], forFile: label)
            source = try StoredCheckpoint(manifest: manifest, store: repository.store, name: label)
        }
        return try AdapterFolder(configBytes: config, tensors: source, name: label)
    }

    public func bytes(_ v: Version) throws -> [UInt8] {
        switch v {
        case let .blob(b): return b
        case let .file(p): return try FileSystem.readFile(p)
        }
    }
}
