import CGit2
import TesseraCore
import TesseraIO

/// Folders at a revision (`REV:folder`): what a revision path names, and a tree's entries with their sizes, read
/// without loading any blob (a checkpoint committed raw may be gigabytes).
extension GitRepository {
    public enum RevisionObjectKind: Sendable, Equatable {
        case file
        case folder
    }

    public struct TreeEntry: Sendable, Equatable {
        public var name: String
        public var kind: RevisionObjectKind
        /// The blob's size in bytes (0 for folders).
        public var size: Int
    }

    /// Whether `REV:path` names a file or a folder, or nil when it names nothing (or `:path`, the index, which has
    /// no folders).
    public func objectKind(_ spec: String) -> RevisionObjectKind? {
        guard !spec.hasPrefix(":") else { return nil }
        var obj: OpaquePointer?
        guard git_revparse_single(&obj, pointer, spec) == 0, let obj else { return nil }
        defer { git_object_free(obj) }
        switch git_object_type(obj) {
        case GIT_OBJECT_BLOB: return .file
        case GIT_OBJECT_TREE: return .folder
        default: return nil
        }
    }

    /// The entries of the folder `REV:path` names (files and folders; submodules and links are left out).
    public func treeEntries(_ spec: String) throws -> [TreeEntry] {
        var obj: OpaquePointer?
        guard git_revparse_single(&obj, pointer, spec) == 0, let obj else {
            throw TesseraError(.notFound, "\(spec) does not name a folder in this repository",
                               hint: "check the revision and the path (`git ls-tree REV:folder` lists it)")
        }
        defer { git_object_free(obj) }
        guard git_object_type(obj) == GIT_OBJECT_TREE else {
            throw TesseraError(.notFound, "\(spec) is not a folder", hint: "name a folder, e.g. HEAD:models/merged")
        }
        var odb: OpaquePointer?
        guard git_repository_odb(&odb, pointer) == 0, let odb else { throw GitRepository.lastError("cannot open the object database") }
        defer { git_odb_free(odb) }
        var out: [TreeEntry] = []
        for k in 0..<git_tree_entrycount(obj) {
            guard let entry = git_tree_entry_byindex(obj, k), let id = git_tree_entry_id(entry) else { continue }
            let name = String(cString: git_tree_entry_name(entry))
            switch git_tree_entry_type(entry) {
            case GIT_OBJECT_TREE:
                out.append(TreeEntry(name: name, kind: .folder, size: 0))
            case GIT_OBJECT_BLOB:
                // Symbolic links are blobs too: only regular files (executable or not) are files of a checkpoint.
                let mode = git_tree_entry_filemode(entry)
                guard mode == GIT_FILEMODE_BLOB || mode == GIT_FILEMODE_BLOB_EXECUTABLE else { continue }
                var size = 0
                var type = GIT_OBJECT_ANY
                var oid = id.pointee
                guard git_odb_read_header(&size, &type, odb, &oid) == 0 else {
                    throw GitRepository.lastError("cannot read \(spec)/\(name)")
                }
                out.append(TreeEntry(name: name, kind: .file, size: size))
            default:
                continue
            }
        }
        return out
    }
}
