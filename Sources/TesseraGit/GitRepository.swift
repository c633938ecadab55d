import CGit2
import Foundation
import TesseraCore
import TesseraStore
import TesseraIO

/// libgit2 is initialised once per process.
private let libgit2Initialised: Bool = { git_libgit2_init(); return true }()

/// A git repository opened through libgit2, for reading: revisions, blobs, trees, refs, reflogs, the index.
/// One owner per `git_repository`, freed in deinit.
public final class GitRepository {
    let pointer: OpaquePointer

    /// Opens the repository containing `path` (searching upwards, as git does).
    public init(discovering path: String = ".") throws {
        _ = libgit2Initialised
        var repo: OpaquePointer?
        let r = git_repository_open_ext(&repo, path, 0, nil)
        guard r == 0, let repo else {
            throw TesseraError(.git, "not a git repository: \(path)", hint: "run this inside a git repository (or `git init` first)")
        }
        pointer = repo
    }

    deinit { git_repository_free(pointer) }

    static func lastError(_ what: String) -> TesseraError {
        let message = git_error_last().map { String(cString: $0.pointee.message) } ?? "unknown error"
        return TesseraError(.git, "\(what): \(message)")
    }

    /// The worktree's top directory, or nil for a bare repository.
    public var workdir: String? {
        git_repository_workdir(pointer).map { String(String(cString: $0).dropLast(while: { $0 == "/" })) }
    }

    /// The git directory of this worktree (`.git` or `.git/worktrees/NAME`).
    public var gitDirectory: String { String(String(cString: git_repository_path(pointer)).dropLast(while: { $0 == "/" })) }

    /// The directory shared by all worktrees (where Tessera keeps its store).
    public var commonDirectory: String { String(String(cString: git_repository_commondir(pointer)).dropLast(while: { $0 == "/" })) }

    public var isBare: Bool { git_repository_is_bare(pointer) != 0 }

    /// Tessera's object store for this repository (`<common git dir>/tessera`).
    public func objectStore() throws -> ObjectStore { try ObjectStore(root: commonDirectory + "/tessera") }

    // MARK: Revisions and blobs

    /// The object id (hex) a revision names, or nil.
    public func resolve(_ rev: String) -> String? {
        var obj: OpaquePointer?
        guard git_revparse_single(&obj, pointer, rev) == 0, let obj else { return nil }
        defer { git_object_free(obj) }
        return GitRepository.hex(git_object_id(obj))
    }

    /// The commit a revision names (peeled), as hex.
    public func resolveCommit(_ rev: String) -> String? {
        var obj: OpaquePointer?
        guard git_revparse_single(&obj, pointer, rev) == 0, let obj else { return nil }
        defer { git_object_free(obj) }
        var peeled: OpaquePointer?
        guard git_object_peel(&peeled, obj, GIT_OBJECT_COMMIT) == 0, let peeled else { return nil }
        defer { git_object_free(peeled) }
        return GitRepository.hex(git_object_id(peeled))
    }

    /// The bytes of the blob that `REV:path` (or `:path` for the index) names. In a partial clone a blob the
    /// clone has not fetched yet is fetched from the promisor remote, as git itself would.
    public func blob(_ spec: String) throws -> [UInt8] {
        if spec.hasPrefix(":") { return try indexBlob(spec) }
        let id = try blobID(spec)
        guard let bytes = blobBytes(id: id) else {
            throw TesseraError(.notFound, "\(spec): blob \(id.prefix(12)) is not in this repository",
                               hint: isPartialClone ? "it could not be fetched from the promisor remote; check the network and `git fetch`" : "run `git fsck`")
        }
        return bytes
    }

    /// The id of the blob `REV:path` names, resolved through trees only (a partial clone has its trees, not all
    /// its blobs).
    public func blobID(_ spec: String) throws -> String {
        func notFound() -> TesseraError {
            TesseraError(.notFound, "\(spec) does not name a file in this repository",
                         hint: "check the revision and the path (`git ls-tree -r REV` lists the files)")
        }
        guard let colon = spec.firstIndex(of: ":") else { throw notFound() }
        let rev = String(spec[..<colon]), path = String(spec[spec.index(after: colon)...])
        var obj: OpaquePointer?
        guard git_revparse_single(&obj, pointer, rev.isEmpty ? "HEAD" : rev) == 0, let obj else { throw notFound() }
        defer { git_object_free(obj) }
        var treeObject: OpaquePointer?
        guard git_object_peel(&treeObject, obj, GIT_OBJECT_TREE) == 0, let treeObject else { throw notFound() }
        defer { git_object_free(treeObject) }
        var entry: OpaquePointer?
        guard git_tree_entry_bypath(&entry, treeObject, path) == 0, let entry else { throw notFound() }
        defer { git_tree_entry_free(entry) }
        guard git_tree_entry_type(entry) == GIT_OBJECT_BLOB else {
            throw TesseraError(.notFound, "\(spec) is not a file", hint: "name a file, e.g. HEAD:model.safetensors")
        }
        return GitRepository.hex(git_tree_entry_id(entry))
    }

    /// `:path` or `:N:path`: the blob staged in the index (stage N, default 0), as git's revision syntax means it.
    private func indexBlob(_ spec: String) throws -> [UInt8] {
        var rest = spec.dropFirst()
        var stage: Int32 = 0
        if rest.count > 2, let n = Int32(String(rest.prefix(1))), rest.dropFirst().first == ":" {
            stage = n
            rest = rest.dropFirst(2)
        }
        var index: OpaquePointer?
        guard git_repository_index(&index, pointer) == 0, let index else { throw GitRepository.lastError("cannot read the index") }
        defer { git_index_free(index) }
        guard let entry = git_index_get_bypath(index, String(rest), stage) else {
            throw TesseraError(.notFound, "\(rest) is not in the index", hint: "`git add` it first, or name a revision: REV:\(rest)")
        }
        var id = entry.pointee.id
        let hex = withUnsafeBytes(of: &id.id) { Array($0) }.hexString
        guard let bytes = blobBytes(id: hex) else { throw GitRepository.lastError("cannot read \(spec)") }
        return bytes
    }

    // MARK: Partial clones

    /// The promisor remote of a partial clone (`git clone --filter=...`), or nil for a full clone.
    public var promisorRemote: String? {
        if let r = configString("extensions.partialclone") { return r }
        var names = git_strarray()
        guard git_remote_list(&names, pointer) == 0 else { return nil }
        defer { git_strarray_dispose(&names) }
        for k in 0..<names.count {
            let name = String(cString: names.strings[k]!)
            if configString("remote.\(name).promisor") == "true" { return name }
        }
        return nil
    }

    public var isPartialClone: Bool { promisorRemote != nil }

    /// Whether the object database has an object (without fetching anything).
    public func hasObject(_ hex: String) -> Bool {
        guard var oid = GitRepository.oid(hex) else { return false }
        var odb: OpaquePointer?
        guard git_repository_odb(&odb, pointer) == 0, let odb else { return false }
        defer { git_odb_free(odb) }
        return git_odb_exists(odb, &oid) != 0
    }

    /// Fetches objects a partial clone lacks from its promisor remote, in one `git fetch` (what git does for a lazy
    /// fetch, but for all of them at once). libgit2 cannot fetch promised objects itself.
    public func fetchPromisedObjects(_ ids: [String]) throws {
        guard let remote = promisorRemote, !ids.isEmpty else { return }
        let input = Array(ids.joined(separator: "\n").utf8) + [0x0A]
        try Subprocess.check(["git", "-c", "fetch.negotiationAlgorithm=noop", "fetch", remote, "--no-tags", "--no-write-fetch-head",
                              "--recurse-submodules=no", "--filter=blob:none", "--stdin"],
                             directory: workdir ?? gitDirectory, input: input,
                             what: "cannot fetch \(ids.count) object(s) this partial clone lacks from '\(remote)'",
                             hint: "check that the remote is reachable (`git fetch \(remote)`)")
        var odb: OpaquePointer?
        if git_repository_odb(&odb, pointer) == 0, let odb { git_odb_refresh(odb); git_odb_free(odb) }
    }

    /// A blob's bytes by id, fetching it first in a partial clone that lacks it; nil if it cannot be had.
    public func blobBytes(id hex: String) -> [UInt8]? {
        if !hasObject(hex), isPartialClone { try? fetchPromisedObjects([hex]) }
        guard var oid = GitRepository.oid(hex) else { return nil }
        var blob: OpaquePointer?
        guard git_blob_lookup(&blob, pointer, &oid) == 0, let blob else { return nil }
        defer { git_blob_free(blob) }
        return blobBytes(blob)
    }

    private func blobBytes(_ blob: OpaquePointer) -> [UInt8] {
        let size = Int(git_blob_rawsize(blob))
        guard size > 0, let raw = git_blob_rawcontent(blob) else { return [] }
        return Array(UnsafeRawBufferPointer(start: raw, count: size))
    }

    public static func hex(_ oid: UnsafePointer<git_oid>?) -> String {
        guard let oid else { return "" }
        return withUnsafeBytes(of: oid.pointee.id) { Array($0) }.hexString
    }

    static func oid(_ hex: String) -> git_oid? {
        var o = git_oid()
        return git_oid_fromstr(&o, hex) == 0 ? o : nil
    }

    /// Reads a blob by id and returns its manifest if it is one (cheaply rejecting large or non-manifest blobs).
    func manifest(blobID: git_oid, path: String) -> Manifest? {
        var id = blobID
        // The header is enough to skip blobs that cannot be manifests, without inflating them.
        var odb: OpaquePointer?
        if git_repository_odb(&odb, pointer) == 0, let odb {
            defer { git_odb_free(odb) }
            var length = 0
            var type = GIT_OBJECT_ANY
            if git_odb_exists(odb, &id) == 0 { return nil }
            if git_odb_read_header(&length, &type, odb, &id) == 0, length <= 20 || length >= 64 << 20 { return nil }
        }
        var blob: OpaquePointer?
        guard git_blob_lookup(&blob, pointer, &id) == 0, let blob else { return nil }
        defer { git_blob_free(blob) }
        let size = Int(git_blob_rawsize(blob))
        guard size > 20, size < 64 << 20, let raw = git_blob_rawcontent(blob) else { return nil }
        let bytes = UnsafeRawBufferPointer(start: raw, count: size)
        guard Manifest.looksLikeManifest(bytes) else { return nil }
        return try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: path)
    }

    // MARK: Walking history

    /// Commits reachable from `include` and not from `exclude` (revision names or ids), newest first.
    public func commits(reachableFrom include: [String], excluding exclude: [String] = [], globs: [String] = []) throws -> [String] {
        var walk: OpaquePointer?
        guard git_revwalk_new(&walk, pointer) == 0, let walk else { throw GitRepository.lastError("cannot walk history") }
        defer { git_revwalk_free(walk) }
        git_revwalk_sorting(walk, GIT_SORT_TIME.rawValue)
        var any = false
        for rev in include {
            guard let c = resolveCommit(rev), var o = GitRepository.oid(c) else { continue }
            if git_revwalk_push(walk, &o) == 0 { any = true }
        }
        for g in globs where git_revwalk_push_glob(walk, g) == 0 { any = true }
        for rev in exclude {
            guard let c = resolveCommit(rev), var o = GitRepository.oid(c) else { continue }
            git_revwalk_hide(walk, &o)
        }
        guard any else { return [] }
        var out: [String] = []
        var o = git_oid()
        while git_revwalk_next(&o, walk) == 0 { out.append(withUnsafeBytes(of: o.id) { Array($0) }.hexString) }
        return out
    }

    /// Every manifest in the trees of the given commits, with its path, visiting each distinct blob once. In a
    /// partial clone, the blobs of tracked paths (by the current .gitattributes) that were not fetched are fetched
    /// first, all at once: a manifest skipped there would be a wrong answer (a log counting every tensor as added,
    /// a gc deleting what only that manifest names).
    public func manifests(inCommits commits: [String]) throws -> [(path: String, manifest: Manifest)] {
        var seenTrees = Set<String>()
        var seenBlobs = Set<String>()
        var found: [(path: String, blob: git_oid)] = []
        for c in commits {
            guard var o = GitRepository.oid(c) else { continue }
            var commit: OpaquePointer?
            guard git_commit_lookup(&commit, pointer, &o) == 0, let commit else { continue }
            defer { git_commit_free(commit) }
            var tree: OpaquePointer?
            guard git_commit_tree(&tree, commit) == 0, let tree else { continue }
            defer { git_tree_free(tree) }
            collectBlobs(tree: tree, prefix: "", seenTrees: &seenTrees, seenBlobs: &seenBlobs, into: &found)
        }
        if isPartialClone {
            let missing = found.filter { !hasObject(GitRepository.hex(oidPointer: $0.blob)) && attribute("filter", path: $0.path) == "tessera" }
            if !missing.isEmpty { try fetchPromisedObjects(missing.map { GitRepository.hex(oidPointer: $0.blob) }) }
        }
        var out: [(String, Manifest)] = []
        for f in found {
            if let m = manifest(blobID: f.blob, path: f.path) { out.append((f.path, m)) }
        }
        return out
    }

    private func collectBlobs(tree: OpaquePointer, prefix: String, seenTrees: inout Set<String>, seenBlobs: inout Set<String>,
                              into out: inout [(path: String, blob: git_oid)]) {
        let treeID = GitRepository.hex(git_tree_id(tree))
        guard seenTrees.insert(treeID).inserted else { return }
        let count = git_tree_entrycount(tree)
        for k in 0..<count {
            guard let entry = git_tree_entry_byindex(tree, k) else { continue }
            let name = String(cString: git_tree_entry_name(entry))
            let path = prefix.isEmpty ? name : prefix + "/" + name
            let type = git_tree_entry_type(entry)
            guard let idp = git_tree_entry_id(entry) else { continue }
            if type == GIT_OBJECT_TREE {
                var sub: OpaquePointer?
                var id = idp.pointee
                guard git_tree_lookup(&sub, pointer, &id) == 0, let sub else { continue }
                defer { git_tree_free(sub) }
                collectBlobs(tree: sub, prefix: path, seenTrees: &seenTrees, seenBlobs: &seenBlobs, into: &out)
            } else if type == GIT_OBJECT_BLOB {
                guard seenBlobs.insert(GitRepository.hex(idp)).inserted else { continue }
                out.append((path, idp.pointee))
            }
        }
    }

    static func hex(oidPointer oid: git_oid) -> String {
        var o = oid
        return withUnsafeBytes(of: &o.id) { Array($0) }.hexString
    }

    /// Manifests staged in an index file (what `git add` has recorded but not yet committed).
    public func manifestsInIndex(path indexPath: String? = nil) -> [(path: String, manifest: Manifest)] {
        var index: OpaquePointer?
        if let indexPath {
            guard git_index_open(&index, indexPath) == 0 else { return [] }
        } else {
            guard git_repository_index(&index, pointer) == 0 else { return [] }
        }
        guard let index else { return [] }
        defer { git_index_free(index) }
        var out: [(String, Manifest)] = []
        for k in 0..<git_index_entrycount(index) {
            guard let e = git_index_get_byindex(index, k) else { continue }
            let path = String(cString: e.pointee.path)
            if let m = manifest(blobID: e.pointee.id, path: path) { out.append((path, m)) }
        }
        return out
    }

    /// Commits named by every reflog entry of every ref (what `git gc` keeps alive, and where stashes live).
    public func reflogCommits() -> [String] {
        var names = git_strarray()
        guard git_reference_list(&names, pointer) == 0 else { return [] }
        defer { git_strarray_dispose(&names) }
        var refs = (0..<names.count).map { String(cString: names.strings[$0]!) }
        refs.append("HEAD")
        var out: [String] = []
        for r in refs {
            var log: OpaquePointer?
            guard git_reflog_read(&log, pointer, r) == 0, let log else { continue }
            defer { git_reflog_free(log) }
            for k in 0..<git_reflog_entrycount(log) {
                guard let e = git_reflog_entry_byindex(log, k) else { continue }
                let id = GitRepository.hex(git_reflog_entry_id_new(e))
                if id != String(repeating: "0", count: 40) { out.append(id) }
            }
        }
        return out
    }

    /// Names of linked worktrees' git directories (`.git/worktrees/NAME`).
    public func linkedWorktreeGitDirectories() -> [String] {
        FileSystem.list(commonDirectory + "/worktrees").map { commonDirectory + "/worktrees/" + $0 }
    }

    // MARK: Config

    public func configString(_ key: String) -> String? {
        var config: OpaquePointer?
        guard git_repository_config_snapshot(&config, pointer) == 0, let config else { return nil }
        defer { git_config_free(config) }
        var value: UnsafePointer<CChar>?
        guard git_config_get_string(&value, config, key) == 0, let value else { return nil }
        return String(cString: value)
    }

    /// The value of a git attribute for a path ("set", "unset", a string, or nil when unspecified).
    public func attribute(_ name: String, path: String) -> String? {
        var value: UnsafePointer<CChar>?
        guard git_attr_get(&value, pointer, 0, path, name) == 0 else { return nil }
        switch git_attr_value(value) {
        case GIT_ATTR_VALUE_TRUE: return "set"
        case GIT_ATTR_VALUE_FALSE: return "unset"
        case GIT_ATTR_VALUE_STRING: return value.map { String(cString: $0) }
        default: return nil
        }
    }
}

extension String {
    func dropLast(while predicate: (Character) -> Bool) -> Substring {
        var s = self[...]
        while let c = s.last, predicate(c), s.count > 1 { s = s.dropLast() }
        return s
    }
}

extension GitRepository {
    /// Writes a commit (no parent, on no branch) whose tree holds the given files, and returns its id. Used to hand
    /// Git LFS pointer files to `git lfs fetch`, which downloads what the pointers in a commit name.
    public func writeDetachedCommit(files: [(name: String, bytes: [UInt8])], message: String) throws -> String {
        var builder: OpaquePointer?
        guard git_treebuilder_new(&builder, pointer, nil) == 0, let builder else { throw GitRepository.lastError("cannot build a tree") }
        defer { git_treebuilder_free(builder) }
        for f in files {
            var blobID = git_oid()
            let r = f.bytes.withUnsafeBytes { git_blob_create_from_buffer(&blobID, pointer, $0.baseAddress, $0.count) }
            guard r == 0 else { throw GitRepository.lastError("cannot write a blob") }
            guard git_treebuilder_insert(nil, builder, f.name, &blobID, GIT_FILEMODE_BLOB) == 0 else {
                throw GitRepository.lastError("cannot build a tree")
            }
        }
        var treeID = git_oid()
        guard git_treebuilder_write(&treeID, builder) == 0 else { throw GitRepository.lastError("cannot write a tree") }
        var tree: OpaquePointer?
        guard git_tree_lookup(&tree, pointer, &treeID) == 0, let tree else { throw GitRepository.lastError("cannot read a tree") }
        defer { git_tree_free(tree) }
        var signature: UnsafeMutablePointer<git_signature>?
        guard git_signature_new(&signature, "tessera", "tessera@localhost", 0, 0) == 0, let signature else {
            throw GitRepository.lastError("cannot make a signature")
        }
        defer { git_signature_free(signature) }
        var commitID = git_oid()
        let r = git_commit_create(&commitID, pointer, nil, signature, signature, nil, message, tree, 0, nil)
        guard r == 0 else { throw GitRepository.lastError("cannot write a commit") }
        return withUnsafeBytes(of: commitID.id) { Array($0) }.hexString
    }
}
