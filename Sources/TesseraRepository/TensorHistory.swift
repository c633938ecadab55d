import Foundation
import TesseraCore
import TesseraGit
import TesseraIO

/// The commits where a tracked file's tensors changed (`tessera log`): each commit's manifest compared with its first
/// parent's by `ManifestDiff` (exact raw hashes, byte-exact names, renames paired).
public struct TensorHistory {
    public struct Entry {
        public var commit: String
        public var date: String
        public var subject: String
        /// Names by kind of change, sorted; renames as (from, to) in the file's order.
        public var changed: [String] = []
        public var added: [String] = []
        public var removed: [String] = []
        public var renamed: [(from: String, to: String)] = []
    }

    public let path: String
    public let entries: [Entry]

    /// The history of `path` (relative to the worktree's top) from `revision`, newest first; with `tensor`, only the
    /// commits where that tensor changed (an error when no version has such a tensor).
    public init(path: String, from revision: String, tensor: String?, repository: Repository) throws {
        self.path = path
        let r = try Subprocess.check(["git", "log", "--format=%H%x09%P%x09%ad%x09%s", "--date=short", revision, "--", path],
                                     directory: repository.commandDirectory, what: "git log failed")
        func version(_ rev: String) -> ManifestDiff.Side? {
            guard let bytes = try? repository.git.blob("\(rev):\(path)"), Manifest.looksLikeManifest(bytes),
                  let m = try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: path) else { return nil }
            return ManifestDiff.Side(m)
        }
        let wanted = tensor.map(ExactName.init)
        var seenTensor = false
        var entries: [Entry] = []
        for line in r.stdoutText.split(separator: "\n") {
            let f = line.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
            guard f.count == 4 else { continue }
            let (commit, parents) = (f[0], f[1].split(separator: " ").map(String.init))
            let diff = try ManifestDiff(old: parents.first.flatMap(version), new: version(commit))
            var changes = diff.changes.filter { $0.kind != .unchanged }
            if let wanted {
                if diff.change(of: wanted) != nil { seenTensor = true }
                changes = changes.filter { ExactName($0.name) == wanted || $0.oldName.map(ExactName.init) == wanted }
            }
            if changes.isEmpty { continue }
            var entry = Entry(commit: commit, date: f[2], subject: f[3])
            for c in changes {
                switch c.kind {
                case .changed: entry.changed.append(c.name)
                case .added: entry.added.append(c.name)
                case .removed: entry.removed.append(c.name)
                case .renamed: entry.renamed.append((c.oldName ?? "", c.name))
                case .unchanged: break
                }
            }
            entry.changed.sort()
            entry.added.sort()
            entry.removed.sort()
            entries.append(entry)
        }
        if let tensor, !seenTensor {
            throw TesseraError(.notFound, "\(path) has no tensor named '\(tensor)' in any version from \(revision)",
                               hint: "`tessera ls \(revision):\(path)` lists its tensors")
        }
        self.entries = entries
    }
}
