import CGit2
import TesseraCore

extension GitRepository {
    /// Paths, blob ids and modes of the index's stage-0 entries.
    public func indexEntries() -> [(path: String, blob: String, mode: UInt32)] {
        var index: OpaquePointer?
        guard git_repository_index(&index, pointer) == 0, let index else { return [] }
        defer { git_index_free(index) }
        var out: [(String, String, UInt32)] = []
        for k in 0..<git_index_entrycount(index) {
            guard let e = git_index_get_byindex(index, k) else { continue }
            // Stage bits 12-13 of the flags: conflicted entries are not checked out by anyone.
            guard (e.pointee.flags >> 12) & 3 == 0 else { continue }
            var id = e.pointee.id
            out.append((String(cString: e.pointee.path), withUnsafeBytes(of: &id.id) { Array($0) }.hexString, e.pointee.mode))
        }
        return out
    }
}
