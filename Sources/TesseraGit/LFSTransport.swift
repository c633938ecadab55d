#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TesseraCore
import TesseraStore

/// Carries Tessera's objects to and from remotes as Git LFS objects, so that any LFS-capable remote (GitHub,
/// GitLab, Hugging Face, a plain file:// path) stores them. An object's LFS oid is its object id (SHA-256 of its
/// bytes). Tessera keeps its own store; objects pass through `lfs/objects` only to be sent or received, so
/// `git lfs prune` can never delete Tessera's copy.
public struct LFSTransport {
    let repository: GitRepository
    let store: ObjectStore

    public init(repository: GitRepository, store: ObjectStore) {
        self.repository = repository
        self.store = store
    }

    var lfsObjects: String { repository.commonDirectory + "/lfs/objects" }

    func lfsPath(_ oid: String) -> String {
        "\(lfsObjects)/\(oid.prefix(2))/\(oid.dropFirst(2).prefix(2))/\(oid)"
    }

    var gitDirectoryForCommands: String { repository.workdir ?? repository.gitDirectory }

    /// The remote to fetch from: `tessera.remote`, else the current branch's remote, else origin.
    public func defaultRemote() -> String {
        if let r = ProcessInfo.processInfo.environment["TESSERA_REMOTE"], !r.isEmpty { return r }
        if let r = repository.configString("tessera.remote") { return r }
        if let head = try? Subprocess.run(["git", "symbolic-ref", "--short", "-q", "HEAD"], directory: gitDirectoryForCommands),
           head.status == 0 {
            let branch = head.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            if let r = repository.configString("branch.\(branch).remote") { return r }
        }
        return "origin"
    }

    /// The LFS pointer text for an object.
    static func pointer(oid: String, size: Int) -> [UInt8] {
        Array("version https://git-lfs.github.com/spec/v1\noid sha256:\(oid)\nsize \(size)\n".utf8)
    }

    // MARK: Fetch

    /// Downloads objects from the remote into the store, verifying each.
    public func fetch(_ objects: [(id: String, size: Int)], forFile file: String? = nil, remote: String? = nil) throws {
        let remote = remote ?? defaultRemote()
        var sizes: [String: Int] = [:]
        for o in objects { sizes[o.id] = o.size }
        let wanted = objects.map(\.id).filter { !store.contains($0) }
        guard !wanted.isEmpty else { return }
        // Objects already in lfs/objects (an earlier transfer) need no download.
        var toDownload: [String] = []
        for oid in wanted where !adopt(oid) { toDownload.append(oid) }
        if !toDownload.isEmpty {
            // `git lfs fetch` downloads what the pointer files of a commit name; the commit is written for the
            // purpose and referenced by no branch (git gc removes it).
            let files = toDownload.map { (name: $0, bytes: LFSTransport.pointer(oid: $0, size: sizes[$0] ?? 1)) }
            let commit = try repository.writeDetachedCommit(files: files, message: "tessera fetch")
            let r = try Subprocess.run(["git", "lfs", "fetch", remote, commit], directory: gitDirectoryForCommands)
            if r.status != 0 {
                let why = r.stderr.split(separator: "\n").last.map(String.init) ?? "exit status \(r.status)"
                throw TesseraError(.lfs, "\(file.map { "\($0): " } ?? "")cannot fetch \(toDownload.count) object(s) from remote '\(remote)': \(why)",
                                   hint: "check that the remote has them (push from where they were made) and that git-lfs is installed")
            }
            for oid in toDownload where !adopt(oid) {
                throw TesseraError(.objectMissing, "\(file.map { "\($0): " } ?? "")object \(oid.prefix(12)) is not on remote '\(remote)'",
                                   hint: "push it from the repository where it was made (`git push` there), then try again")
            }
        }
    }

    /// Moves an object that git-lfs has in `lfs/objects` into the store (hard link when possible), after checking
    /// its SHA-256. Returns false if git-lfs does not have it.
    @discardableResult
    func adopt(_ oid: String) -> Bool {
        guard ObjectID.isValid(oid) else { return false }
        let src = lfsPath(oid)
        guard FileSystem.exists(src), (try? FileSystem.sha256(ofFile: src)) == oid else { return false }
        let dst = store.objectPath(oid)
        try? FileSystem.makeDirectories("\(store.objectsDirectory)/\(oid.prefix(2))")
        if link(src, dst) != 0 && !FileSystem.exists(dst) {
            try? FileSystem.copyAtomically(src, to: dst, tmpDir: store.tmpDirectory)
        }
        return store.contains(oid)
    }

    // MARK: Push

    /// Uploads objects to the remote (git-lfs skips the ones the remote already has).
    public func push(_ oids: [String], remote: String) throws {
        guard !oids.isEmpty else { return }
        for oid in oids {
            let dst = lfsPath(oid)
            if FileSystem.exists(dst) { continue }
            try FileSystem.makeDirectories(String(dst[..<dst.lastIndex(of: "/")!]))
            if link(store.objectPath(oid), dst) != 0 {
                try FileSystem.copyAtomically(store.objectPath(oid), to: dst, tmpDir: store.tmpDirectory)
            }
        }
        var start = 0
        while start < oids.count {
            let batch = Array(oids[start..<min(start + 400, oids.count)])
            let r = try Subprocess.run(["git", "lfs", "push", "--object-id", remote] + batch, directory: gitDirectoryForCommands, passStderr: false)
            if r.status != 0 {
                let why = r.stderr.split(separator: "\n").last.map(String.init) ?? "exit status \(r.status)"
                throw TesseraError(.lfs, "cannot push objects to remote '\(remote)': \(why)",
                                   hint: "check the remote's Git LFS support and your credentials, then push again")
            }
            start += batch.count
        }
    }

    /// Objects named by the manifests of the commits a push sends: reachable from `local`, not from `remoteSHA`
    /// and not from any ref the remote is known to have.
    public func objectsToPush(local: String, remoteSHA: String?, remote: String) throws -> [String] {
        var exclude: [String] = []
        if let remoteSHA, repository.resolveCommit(remoteSHA) != nil { exclude.append(remoteSHA) }
        let knownRemoteRefs = (try? Subprocess.run(["git", "for-each-ref", "--format=%(objectname)", "refs/remotes/\(remote)/"],
                                                   directory: gitDirectoryForCommands).stdoutText) ?? ""
        exclude += knownRemoteRefs.split(separator: "\n").map(String.init)
        let commits = try repository.commits(reachableFrom: [local], excluding: exclude)
        var seen = Set<String>()
        var out: [String] = []
        for (_, m) in try repository.manifests(inCommits: commits) {
            for id in m.objectIDs where seen.insert(id).inserted { out.append(id) }
        }
        return out
    }
}
