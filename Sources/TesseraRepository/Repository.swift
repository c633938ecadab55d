import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraStore

/// A git repository with Tessera's object store: what every command that reads or writes tracked files works in.
public struct Repository {
    public let git: GitRepository
    public let store: ObjectStore

    /// The repository holding `directory` (searched upwards, as git does).
    public init(directory: String) throws {
        try self.init(git: try GitRepository(discovering: directory))
    }

    public init(git: GitRepository) throws {
        self.git = git
        store = try git.objectStore()
    }

    /// The top of the working tree; an error in a bare repository.
    public var worktree: String {
        get throws {
            guard let w = git.workdir else {
                throw TesseraError(.usage, "this command needs a working tree, and this repository is bare", hint: "run it in a clone with a checkout")
            }
            return w
        }
    }

    /// Where git commands about this repository run: the working tree, else the git directory.
    public var commandDirectory: String { git.workdir ?? git.gitDirectory }

    /// A path relative to the worktree's top, from one relative to the current directory (unchanged when it is not
    /// inside the worktree).
    public func relativePath(_ path: String) throws -> String {
        let top = try worktree
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        let standardized = URL(fileURLWithPath: absolute).standardizedFileURL.path
        let topStd = URL(fileURLWithPath: top).standardizedFileURL.path
        if standardized.hasPrefix(topStd + "/") { return String(standardized.dropFirst(topStd.count + 1)) }
        return path
    }

    /// Carries objects to and from remotes.
    public var transport: LFSTransport { LFSTransport(repository: git, store: store) }

    /// Fetches the objects these manifests name that the store lacks (one transfer), for `file` in messages.
    public func fetchMissingObjects(of manifests: [Manifest], forFile file: String?, remote: String? = nil) throws {
        let missing = manifests.flatMap(\.objects).filter { !store.contains($0.id) }
        if !missing.isEmpty { try transport.fetch(missing, forFile: file, remote: remote) }
    }

    /// The text of a blob (`REV:path`, `:path`, `:N:path`) parsed as a manifest; nil when it is not one.
    public func manifestBlob(_ spec: String, name: String) throws -> Manifest? {
        let bytes = try git.blob(spec)
        guard Manifest.looksLikeManifest(bytes) else { return nil }
        return try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: name)
    }
}
